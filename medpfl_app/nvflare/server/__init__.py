"""Server-side NVFlare components: the audit filter and what it needs."""
