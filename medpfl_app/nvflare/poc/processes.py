"""The processes one POC workspace started, and who holds a port: read from ``/proc``, never matched by name alone.

A POC process is one of:

* a *watchdog*: ``bash <prod>/<service>/startup/sub_start.sh``, the loop that restarts its service whenever the
  service process is gone (so ending a service without ending its watchdog only restarts it);
* a *service*: ``python -m nvflare.private.fed.app.{server.server_train,client.client_train} -m <prod>/<service>``;
* a *job* process: ``nvflare.private.fed.app.*`` with ``-m <prod>/<service>`` (server runner, client worker);
* a *child* of any of those (e.g. a site script NVFlare launched as an external process).

``<service>`` is a folder of the workspace's ``prod_00`` holding ``startup/sub_start.sh``: the server and the sites.
Admin consoles (``startup/fl_admin.sh``, ``nvflare.fuel.hci.tools.admin``) have no such script and are never
matched, nor is any process that merely runs inside the workspace.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

PROC = Path("/proc")
WATCHDOG_SCRIPTS = ("sub_start.sh", "start.sh")
NVFLARE_FED_MODULE = "nvflare.private.fed.app."
SERVICE_MODULES = ("nvflare.private.fed.app.server.server_train", "nvflare.private.fed.app.client.client_train")
_TCP_LISTEN = "0A"


class ProcessRole(StrEnum):
    """What a POC process is to its service (see the module docstring)."""

    WATCHDOG = "watchdog"
    SERVICE = "service"
    JOB = "job"
    CHILD = "child"


@dataclass(frozen=True)
class PocProcess:
    """One running process started by a POC workspace; ``started`` (clock ticks since boot) guards pid reuse."""

    pid: int
    service: str
    role: ProcessRole
    command: str
    started: int

    def describe(self) -> str:
        return f"{self.service} {self.role} (pid {self.pid})"


@dataclass(frozen=True)
class PortHolder:
    """A process listening on a TCP port."""

    port: int
    pid: int | None
    command: str

    def describe(self) -> str:
        who = f"pid {self.pid} ({_shorten(self.command)})" if self.pid is not None else "a process this user cannot see"
        return f"port {self.port} is in use by {who}"


def service_dirs(prod_dir: Path) -> dict[str, Path]:
    """Server and site folders of a POC ``prod_00`` (those with a ``startup/sub_start.sh``), by name."""
    if not prod_dir.is_dir():
        return {}
    return {p.name: p for p in sorted(prod_dir.iterdir()) if (p / "startup" / "sub_start.sh").is_file()}


def find_poc_processes(prod_dir: Path) -> list[PocProcess]:
    """Every live process started by the POC system under ``prod_dir`` (watchdogs first)."""
    services = {name: _path_forms(path) for name, path in service_dirs(prod_dir).items()}
    if not services:
        return []
    table = _process_table()
    found: dict[int, PocProcess] = {}
    for pid, (args, _, started) in table.items():
        match = _classify(args, services)
        if match is not None:
            found[pid] = PocProcess(pid, match[0], match[1], " ".join(args), started)
    for pid, (args, _, started) in table.items():
        owner = _poc_ancestor(pid, table, found)
        if pid not in found and owner is not None:
            found[pid] = PocProcess(pid, owner.service, ProcessRole.CHILD, " ".join(args), started)
    order = list(ProcessRole)
    return sorted(found.values(), key=lambda p: (order.index(p.role), p.service, p.pid))


def end_processes(
    processes: Sequence[PocProcess], *, grace_s: float = 10.0, kill_wait_s: float = 5.0
) -> tuple[list[PocProcess], list[PocProcess], list[PocProcess]]:
    """SIGTERM, then SIGKILL after ``grace_s``; returns (ended by TERM, ended by KILL, still alive).

    Watchdogs are signalled first so they cannot restart the service they guard. A pid whose start time changed
    is another process now and is left alone (counted as ended).
    """
    ordered = sorted(processes, key=lambda p: p.role != ProcessRole.WATCHDOG)
    for process in ordered:
        _signal(process, signal.SIGTERM)
    alive = _wait_until_gone(ordered, grace_s)
    terminated = [p for p in ordered if p not in alive]
    for process in alive:
        _signal(process, signal.SIGKILL)
    survivors = _wait_until_gone(alive, kill_wait_s)
    killed = [p for p in alive if p not in survivors]
    return terminated, killed, survivors


def is_alive(process: PocProcess) -> bool:
    """Whether ``process`` still runs (a zombie or a reused pid counts as gone)."""
    stat = _read_stat(process.pid)
    return stat is not None and stat[2] == process.started and stat[0] != "Z"


def port_holders(ports: Iterable[int]) -> list[PortHolder]:
    """Processes listening on any of ``ports`` (IPv4 and IPv6), from ``/proc/net/tcp*``."""
    wanted = set(ports)
    inodes: dict[str, int] = {}
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _TCP_LISTEN:
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in wanted:
                    inodes[fields[9]] = port
    if not inodes:
        return []
    holders: dict[tuple[int, int | None], PortHolder] = {}
    for pid, argv, sockets in _socket_owners(set(inodes)):
        for inode in sockets:
            holders[(inodes[inode], pid)] = PortHolder(inodes[inode], pid, " ".join(argv))
    seen_ports = {port for port, _ in holders}
    for port in sorted(set(inodes.values()) - seen_ports):
        holders[(port, None)] = PortHolder(port, None, "")
    return sorted(holders.values(), key=lambda h: (h.port, h.pid or 0))


def _classify(args: list[str], services: dict[str, set[str]]) -> tuple[str, ProcessRole] | None:
    for service, forms in services.items():
        scripts = {f"{form}/startup/{name}" for form in forms for name in WATCHDOG_SCRIPTS}
        if len(args) >= 2 and Path(args[0]).name in ("bash", "sh") and args[1] in scripts:
            return service, ProcessRole.WATCHDOG
        modules = [a for a in args if a.startswith(NVFLARE_FED_MODULE)]
        if modules and _workspace_arg(args) in forms:
            return service, ProcessRole.SERVICE if modules[0] in SERVICE_MODULES else ProcessRole.JOB
    return None


def _workspace_arg(args: list[str]) -> str | None:
    """The value of the last ``-m`` option that is not the module name (NVFlare's workspace argument)."""
    values = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "-m" and not args[i + 1].startswith("nvflare.")]
    return values[-1].rstrip("/") if values else None


def _path_forms(path: Path) -> set[str]:
    return {str(path).rstrip("/"), os.path.realpath(path)}


def _poc_ancestor(pid: int, table: dict, found: dict[int, PocProcess]) -> PocProcess | None:
    seen = set()
    parent = table[pid][1]
    while parent > 1 and parent not in seen:
        if parent in found:
            return found[parent]
        seen.add(parent)
        parent = table[parent][1] if parent in table else 0
    return None


def _process_table() -> dict[int, tuple[list[str], int, int]]:
    """pid -> (argv, parent pid, start time) of every readable live process except this one."""
    table = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        stat = _read_stat(int(entry.name))
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat is None or stat[0] == "Z":
            continue
        table[int(entry.name)] = ([a.decode(errors="replace") for a in args if a], stat[1], stat[2])
    return table


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) from ``/proc/<pid>/stat``; None once the process is gone."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return fields[0], int(fields[1]), int(fields[19])


def _signal(process: PocProcess, signum: int) -> None:
    if not is_alive(process):
        return
    try:
        os.kill(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _wait_until_gone(processes: Sequence[PocProcess], timeout_s: float) -> list[PocProcess]:
    deadline = time.monotonic() + timeout_s
    alive = [p for p in processes if is_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if is_alive(p)]
    return alive


def _socket_owners(inodes: set[str]) -> Iterable[tuple[int, list[str], set[str]]]:
    """(pid, argv, the wanted socket inodes it holds) for every readable process holding one of ``inodes``."""
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        links = set()
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile (e.g. the descriptor that listed the folder)
                links.add(os.readlink(fd))
        sockets = {link[8:-1] for link in links if link.startswith("socket:[")} & inodes
        if sockets:
            try:
                argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
            except OSError:
                argv = []
            yield int(entry.name), argv, sockets


def _shorten(command: str, limit: int = 160) -> str:
    return command if len(command) <= limit else command[: limit - 3] + "..."
