"""Site-side NVFlare code: the client training loop and the audit's site scorer."""
