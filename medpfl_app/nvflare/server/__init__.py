"""Server-side NVFlare components: the audit filter and what it needs.

`audit_filter` (the entry the job configs name: `AuditFilter`, `GlobalWeightsCache`), `receiving` (checks on what
arrives), `audit_queue` (the bounded queue to the worker and its end-of-run drain), `policy_action` (report,
stop_job, exclude_site), `global_weights` (the job's global-weights store), `arrival_record` (one ledger record per
arrival), `site_requests` (scoring at the site, thumbnails and originals).
"""
