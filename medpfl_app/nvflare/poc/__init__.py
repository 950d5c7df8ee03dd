"""NVFlare POC mode for hospital IT: prepare, configure site data, start, submit, wait, download, stop."""
