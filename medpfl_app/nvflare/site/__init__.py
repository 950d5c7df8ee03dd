"""Site-side NVFlare code: the client training loop and the audit's site scorer.

`client` (the site script's entry, `main`), `arguments`, `preparation`, `dp_ledger` and `round_recorder` (the
training side); `scorer` (the entry the job configs name: `AuditSiteScorer`), `protocol`, `request_checks`,
`round_records`, `round_scoring`, `originals`, `cell_channel` and `end_hold` (the audit's side).
"""
