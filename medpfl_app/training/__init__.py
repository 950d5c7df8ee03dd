"""Site-side training: the NVFlare Client API loop around the Lightning module."""
