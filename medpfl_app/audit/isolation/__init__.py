"""Run audit jobs in a separate, lower-priority, killable worker process (or inline, with the same interface).

The attack on a received update is CPU-heavy and its input comes from a site the server does not control: a
crafted update can make one attack step run far past its time limit. A thread cannot be stopped and competes with
training at the server's own priority; a process can be niced, limited and killed. `AuditProcess` owns one child
process started with the ``spawn`` start method (a multi-threaded NVFlare server must never ``fork``) and sends it
one job at a time: a picklable module-level function and its arguments (NumPy arrays, frozen dataclasses).

No NVFlare import: `medpfl_app.audit.worker` decides which runner to use. The parts: ``runner`` (the interface),
``errors``, ``inline`` (`InlineRunner`), ``process`` (`AuditProcess`), ``slot`` (the parent's handle on its child)
and ``child`` (what runs in the child).

Notes:
    * Priority: the child lowers its own CPU priority with ``os.nice(nice)`` before it imports torch (so its
      start-up is niced too). It stays in the server's session (no ``setsid``): with Linux's autogroup scheduling,
      niceness only weighs against processes of the same session, so a child in a session of its own would compete
      with the whole server at full weight.
    * Memory: ``RLIMIT_AS`` is not used (torch reserves far more address space than it touches). The optional
      per-job guard uses ``RLIMIT_DATA`` (Linux >= 4.7 counts private anonymous mappings): torch then raises
      ``RuntimeError`` (``can't allocate memory``) and NumPy ``MemoryError`` inside the job; native code that
      aborts on a failed allocation instead ends the child, which reads as `AuditCrashed`.
    * The child is daemonic (it may not start processes of its own) and ignores SIGINT (a Ctrl-C in a terminal
      reaches the whole process group; the parent decides when the child stops). It exits when the parent closes
      the pipe, and a watchdog thread ends it within a second when the parent dies while a job runs.
    * ``multiprocessing`` starts its resource-tracker process once per parent alongside the first spawned child.
    * With ``spawn`` the child re-imports the parent's main module as ``__mp_main__`` (guarded by
      ``if __name__ == "__main__"``), which adds to its start-up time.
"""

from medpfl_app.audit.isolation.child import PARENT_CHECK_INTERVAL_S, ChildInfo, ChildSettings
from medpfl_app.audit.isolation.errors import (
    AuditClosed,
    AuditCrashed,
    AuditIsolationError,
    AuditJobError,
    AuditTimeout,
    JobFailure,
)
from medpfl_app.audit.isolation.inline import InlineRunner
from medpfl_app.audit.isolation.process import AuditProcess
from medpfl_app.audit.isolation.runner import AuditRunner
from medpfl_app.audit.isolation.slot import GRACEFUL_STOP_S

__all__ = [
    "GRACEFUL_STOP_S",
    "PARENT_CHECK_INTERVAL_S",
    "AuditClosed",
    "AuditCrashed",
    "AuditIsolationError",
    "AuditJobError",
    "AuditProcess",
    "AuditRunner",
    "AuditTimeout",
    "ChildInfo",
    "ChildSettings",
    "InlineRunner",
    "JobFailure",
]
