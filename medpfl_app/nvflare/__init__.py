"""The only package that imports NVFlare: jobs, POC, privacy policy, client filters, server audit, site."""
