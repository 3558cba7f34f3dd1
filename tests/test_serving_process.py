"""The server's process group (serving/process.py) without vLLM: a sleeping child under the watchdog, stopped
while a second Ctrl-C lands at each step of the stop. Cheap: no vLLM, a Python child that only sleeps."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from tinyformer.serving import process as group


class Owner:  # start_group ties the group's life to an owner object, as VLLMServer does
    pass


def live_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return members


def sleeping_group(tmp_path):
    owner = Owner()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    process, stop = group.start_group(owner, sleeper, tmp_path / "log", dict(os.environ), [0.5])
    deadline = time.monotonic() + 30
    while len(live_members(process.pid)) < 2 and time.monotonic() < deadline:  # the watchdog and its child
        time.sleep(0.05)
    assert len(live_members(process.pid)) == 2, "the watchdog did not start its child"
    return owner, process, stop


def interrupted_once(real):
    """``real``, except that its first call raises KeyboardInterrupt (a Ctrl-C landing there)."""
    calls = []

    def wrapper(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("step", ["_descendants", "_signal_group", "_wait_for_exit"])
def test_a_second_interrupt_anywhere_in_the_stop_still_kills_the_group(step, tmp_path, monkeypatch):
    owner, process, stop = sleeping_group(tmp_path)
    monkeypatch.setattr(group, step, interrupted_once(getattr(group, step)))
    with pytest.raises(KeyboardInterrupt):
        stop()
    assert live_members(process.pid) == [], f"an interrupt in {step} left the group running"
    assert process.returncode is not None


def test_a_plain_stop_ends_the_group(tmp_path):
    owner, process, stop = sleeping_group(tmp_path)
    stop()
    assert live_members(process.pid) == [] and process.returncode is not None


def test_a_stop_after_the_leader_was_reaped_leaves_a_process_with_its_number_alone():
    """pids wrap (at 32768 on the CI box, within minutes of a busy run), and a server's finalizer may run long after its
    group ended: the program that now has the leader's number, a session leader of its own here, is not signalled."""
    finished = subprocess.Popen([sys.executable, "-c", "pass"], stdin=subprocess.PIPE)
    finished.wait()  # reaped: its number is free for the next process
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        finished.pid = other.pid  # as if the number had come round to another program's new session
        group.stop_process_group(finished, [0.5])
        assert other.poll() is None, "stopping a finished group killed the process that reused its number"
    finally:
        other.kill()
        other.wait()
