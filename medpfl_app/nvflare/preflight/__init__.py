"""The pre-flight risk check inside an NVFlare job: a server workflow before FedAvg and a site executor.

`controller.PreflightController` (server, first workflow) and `executor.PreflightExecutor` (sites, task
``medpfl_preflight``) over the pure `medpfl_app.audit.preflight`; `job_settings` reads a job folder for
`medpfl preflight <job>`.
"""
