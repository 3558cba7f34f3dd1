"""The vLLM server's process group: started in a session of its own under the watchdog, stopped whole.

A server is ``watchdog.py`` leading a new session (so its pid is the group id), with vLLM's API process, engine
and workers inside. Stopping sends SIGTERM to the group, waits a grace period, then SIGKILLs the group and every
descendant seen at the start (one that left the group included). The finalizer :func:`start_group` returns runs
the stop once: when called, when its owner is collected, or at interpreter exit.

Boundary: operating-system processes only (spawn, signal, wait, the processes behind a listening port). What the
group runs and when (vLLM's command line, health checks, the log) is :mod:`tinyformer.serving.server`; what the
leader does when this Python process dies is :mod:`tinyformer.serving.watchdog`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import psutil

STOP_GRACE_SECONDS = 10.0  # SIGTERM, then this long to shut down cleanly, then SIGKILL
# While starting, vLLM's API process does not act on SIGTERM (and has nothing to save): kill it sooner.
STARTING_GRACE_SECONDS = 2.0
WATCHDOG = Path(__file__).with_name("watchdog.py")  # run as a script: the leader of the server's process group
# Process groups this Python process started, so tests (and the curious) can check none outlive us.
STARTED_PROCESS_GROUPS: list[int] = []


def start_group(
    owner: object, command: list[str], log_path: Path, env: dict[str, str], grace: list[float]
) -> tuple[subprocess.Popen, weakref.finalize]:
    """Run ``command`` under the watchdog in a process group of its own, its output to ``log_path``; return the
    process (the group's leader) and the finalizer that stops the group, ``grace[0]`` seconds after SIGTERM."""
    with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, str(WATCHDOG), *command],
            stdin=subprocess.PIPE,  # the watchdog stops the group when this pipe closes, even if we are killed
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own process group: one signal reaches vLLM's children too
        )
    STARTED_PROCESS_GROUPS.append(process.pid)  # new session: pgid == pid
    grace[0] = STARTING_GRACE_SECONDS
    # Also runs at interpreter exit. It must not refer to the owner, so the grace period travels in a list.
    return process, weakref.finalize(owner, stop_process_group, process, grace)


def stop_process_group(process: subprocess.Popen, grace: list[float]) -> None:
    """SIGTERM the group, wait ``grace[0]`` seconds, SIGKILL what is left (the group and any descendant that
    left it)."""
    descendants: list[psutil.Process] = []
    # The finalizer runs this once: an interrupt anywhere in it (not only while waiting) must still leave nothing
    # behind. On a busy box listing the descendants took long enough for a second Ctrl-C to land there, and the
    # watchdog and vLLM's API process outlived the stop.
    try:
        if _number_reused(process) or (process.returncode is not None and not _group_alive(process.pid)):
            _close(process.stdin)
            return
        descendants = _descendants(process.pid)
        _close(process.stdin)  # tells the watchdog to stop the group too
        _signal_group(process.pid, signal.SIGTERM)
        _wait_for_exit(process, descendants, grace[0])
    except KeyboardInterrupt:  # a second interrupt while stopping: don't wait, kill
        _close(process.stdin)
        _kill_all(process, descendants)
        raise
    _kill_all(process, descendants)


def _kill_all(process: subprocess.Popen, descendants: list[psutil.Process]) -> None:
    if not _number_reused(process):
        _signal_group(process.pid, signal.SIGKILL)
    for child in descendants:
        try:
            child.kill()  # psutil checks the pid still belongs to the process we listed
        except psutil.Error:
            pass
    process.wait()
    psutil.wait_procs(descendants, timeout=5.0)
    _wait_for_group_gone(process.pid, timeout=5.0)


def _wait_for_group_gone(pgid: int, timeout: float) -> None:
    """SIGKILL is delivered when the kernel next schedules each process: on a busy box a member listed nowhere else
    (a second Ctrl-C came before the descendants were listed) can still be running right after killpg returns."""
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _wait_for_exit(process: subprocess.Popen, descendants: list[psutil.Process], grace: float) -> None:
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        process.poll()
        if (
            process.returncode is not None
            and not _group_alive(process.pid)
            and not any(d.is_running() for d in descendants)
        ):
            return
        time.sleep(0.1)


def _close(pipe) -> None:
    try:
        pipe.close()
    except OSError:
        pass


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _number_reused(process: subprocess.Popen) -> bool:
    """True when the group's leader has exited, been reaped, and its number now names another process: pids wrap
    (at 32768 on the CI box, within minutes of a busy run), and a finalizer may run long after its group ended. While
    any member of our group lives, Linux hands out neither its id nor the leader's pid; so after the reap, a live
    process with the leader's pid is another program's, and so are its group and children."""
    return process.returncode is not None and psutil.pid_exists(process.pid)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """True while any non-zombie process is left in the group."""
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def listening_ports(pgid: int) -> set[int]:
    """TCP ports that processes of the group led by ``pgid`` (and their descendants) listen on."""
    try:
        leader = psutil.Process(pgid)
        group = [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return set()
    ports = set()
    for proc in group:
        try:
            ports |= {c.laddr.port for c in proc.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return ports


def port_owners(port: int) -> list[str]:
    """'pid 1234 (python3)' for each process seen listening on ``port`` (only the user's own are visible)."""
    owners = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in proc.net_connections(kind="tcp")):
                owners.append(f"pid {proc.pid} ({proc.info['name']})")
        except psutil.Error:
            continue
    return owners
