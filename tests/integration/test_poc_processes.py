"""`medpfl poc stop` / `start` find the POC's own processes and nothing else, without starting NVFlare.

The POC processes here are stand-ins with the command lines NVFlare 2.9 uses (a ``sub_start.sh`` watchdog loop, a
``client_train`` service with a child), next to a fake admin console and a plain ``sleep`` running inside the
workspace: only the stand-ins may be stopped. Every process a test starts is ended by the test, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medpfl_app.cli.main import main
from medpfl_app.errors import MedPFLError
from medpfl_app.nvflare.poc import system
from medpfl_app.nvflare.poc.processes import ProcessRole, find_poc_processes, is_alive, port_holders
from medpfl_app.nvflare.poc.shutdown import stop_poc

WATCHDOG_LOOP = "#!/usr/bin/env bash\nwhile true; do sleep 1; done\n"
SERVICE_CODE = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"


@pytest.fixture
def fake_poc(tmp_path: Path):
    """A POC workspace layout with a running fake watchdog + service (+ child), fake admin console and bystander."""
    layout = system.PocLayout(tmp_path / "ws")
    site, server, admin = (layout.prod_dir / name for name in ("site-1", "server", system.ADMIN_USER))
    for folder in (site, server):
        (folder / "startup").mkdir(parents=True)
        (folder / "startup" / "sub_start.sh").write_text(WATCHDOG_LOOP)
    (admin / "startup").mkdir(parents=True)
    (admin / "startup" / "fl_admin.sh").write_text(WATCHDOG_LOOP)
    started: list[subprocess.Popen] = []

    def launch(args: list[str], cwd: Path) -> subprocess.Popen:
        started.append(subprocess.Popen(args, cwd=cwd, start_new_session=True, stdin=subprocess.DEVNULL))
        return started[-1]

    processes = {
        "watchdog": launch(["bash", str(site / "startup" / "sub_start.sh")], tmp_path),
        "service": launch(
            [
                sys.executable,
                "-c",
                SERVICE_CODE,
                "-m",
                "nvflare.private.fed.app.client.client_train",
                "-m",
                str(site),
                "-s",
                "fed_client.json",
            ],
            site,
        ),
        "admin": launch(
            [
                sys.executable,
                "-c",
                "import time; time.sleep(300)",
                "-m",
                "nvflare.fuel.hci.tools.admin",
                "-m",
                str(admin / "startup"),
            ],
            admin,
        ),
        "bystander": launch(["sleep", "300"], site),
    }
    (site / "pid.fl").write_text(str(processes["service"].pid))
    (site / "daemon_pid.fl").write_text(str(processes["watchdog"].pid))
    _wait_for(lambda: len(_children(processes["service"].pid)) == 1)
    try:
        yield layout, processes
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_only_the_pocs_own_processes_are_found(fake_poc) -> None:
    layout, processes = fake_poc
    found = {p.pid: p for p in find_poc_processes(layout.prod_dir)}
    assert found[processes["watchdog"].pid].role == ProcessRole.WATCHDOG
    assert found[processes["service"].pid].role == ProcessRole.SERVICE
    (service_child,) = _children(processes["service"].pid)  # the service's own `sleep 300`
    assert (found[service_child].role, found[service_child].service) == (ProcessRole.CHILD, "site-1")
    assert {p.service for p in found.values()} == {"site-1"}
    assert processes["admin"].pid not in found and processes["bystander"].pid not in found


def test_stop_ends_the_leftovers_reports_nvflares_failure_and_spares_the_rest(fake_poc) -> None:
    """NVFlare's stop fails (as after a server crash): MedPFL ends the POC's processes, says so, exits 1."""
    layout, processes = fake_poc
    report = stop_poc(layout.prod_dir, (), lambda: (5, "Error: INTERNAL_ERROR: cannot abort job"), settle_s=0.5)
    assert report.nvflare_failed and report.stopped and not report.ok
    ended = {p.pid for p in report.terminated + report.killed}
    assert {processes["watchdog"].pid, processes["service"].pid, *_children(processes["service"].pid)} <= ended
    assert find_poc_processes(layout.prod_dir) == []
    assert processes["admin"].poll() is None, "the admin console was stopped"
    assert processes["bystander"].poll() is None, "a process that merely runs in the workspace was stopped"
    assert not (layout.site_dir("site-1") / "daemon_pid.fl").exists()
    text = "\n".join(report.lines())
    assert "FAILED (exit 5: Error: INTERNAL_ERROR: cannot abort job)" in text and "POC system stopped" in text


def test_an_error_while_nvflare_waited_for_a_shutdown_that_worked_is_no_failure(fake_poc) -> None:
    """On a slow machine NVFlare's stop can time out waiting although its shutdown ends every process."""
    layout, processes = fake_poc

    def shutdown_then_time_out() -> tuple[int, str]:
        touched = [processes["watchdog"], processes["service"]]
        for process in touched:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        return 2, "Error: POC system shutdown did not complete before the timeout."

    report = stop_poc(layout.prod_dir, (), shutdown_then_time_out, settle_s=5.0)
    assert report.ok and not report.nvflare_failed and not (report.terminated or report.killed)
    assert "but every process ended by itself" in report.lines()[0]


def test_cli_stop_exits_non_zero_when_nvflares_stop_failed(fake_poc, monkeypatch, capsys) -> None:
    layout, processes = fake_poc
    monkeypatch.setattr(system, "nvflare_cli_result", lambda *a, **k: (5, "Error: abort_job failed"))
    monkeypatch.setattr("medpfl_app.nvflare.poc.shutdown.SETTLE_S", 0.5)
    assert main(["poc", "--workspace", str(layout.workspace), "stop"]) == 1
    out = capsys.readouterr().out
    assert "`nvflare poc stop` FAILED" in out and "site-1 watchdog" in out
    assert processes["admin"].poll() is None and processes["bystander"].poll() is None


def test_cli_stop_with_nothing_running_says_so(tmp_path: Path, capsys) -> None:
    (tmp_path / "ws" / "example_project" / "prod_00" / "site-1" / "startup").mkdir(parents=True)
    assert main(["poc", "--workspace", str(tmp_path / "ws"), "stop"]) == 0
    assert "nothing of this POC workspace was running" in capsys.readouterr().out


def test_start_refuses_while_the_workspaces_poc_runs(fake_poc) -> None:
    layout, processes = fake_poc
    with pytest.raises(MedPFLError, match=f"already running: .*pid {processes['watchdog'].pid}"):
        system.check_can_start(layout)


def test_start_names_the_process_holding_the_port(tmp_path: Path) -> None:
    layout = system.PocLayout(tmp_path / "ws")
    (layout.site_dir("site-1") / "startup").mkdir(parents=True)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        (layout.workspace / "project.yml").write_text(
            f"participants:\n- name: server\n  type: server\n  fed_learn_port: {port}\n"
        )
        assert system.poc_ports(layout) == (port,)
        assert [h.pid for h in port_holders([port])] == [os.getpid()]
        with pytest.raises(MedPFLError, match=f"port {port} is in use by pid {os.getpid()}"):
            system.check_can_start(layout)


def test_a_reused_pid_is_not_signalled(fake_poc) -> None:
    layout, processes = fake_poc
    watchdog = next(p for p in find_poc_processes(layout.prod_dir) if p.role == ProcessRole.WATCHDOG)
    from dataclasses import replace

    assert is_alive(watchdog) and not is_alive(replace(watchdog, started=watchdog.started + 1))


def _wait_for(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the stand-in processes did not start"
        time.sleep(0.1)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
