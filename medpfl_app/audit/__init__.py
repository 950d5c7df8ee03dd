"""Server-side privacy audit: gradient inversion on every received update, scored at the site, in a ledger."""
