"""Keeps a vLLM server from outliving the Python process that started it.

Run as a script (it imports nothing from tinyformer, so it starts in milliseconds):

    python watchdog.py VLLM_COMMAND...

It is the leader of the server's process group and starts vLLM as its child. Its stdin is a pipe
from the Python process that started it: when that process goes away for any reason (a normal
exit, an exception, or SIGKILL from a crashed or force-restarted Jupyter kernel, when no Python
cleanup runs at all), the pipe reaches end-of-file and the watchdog stops the whole group:
SIGTERM, a grace period, then SIGKILL. When vLLM's API process exits on its own (a start-up error, or
killed), the watchdog stops what it leaves behind in the group (its engine and worker processes, which
would otherwise run on as orphans) and exits with its exit code, so the parent sees the failure at once.
"""

import os
import signal
import subprocess
import sys
import threading
import time

GRACE_SECONDS = 10.0


def stop_group(server: subprocess.Popen) -> None:
    os.killpg(0, signal.SIGTERM)  # the whole group: vLLM's API server, engine and workers (and us: ignored)
    deadline = time.monotonic() + GRACE_SECONDS
    while server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # let the engine processes finish their own shutdown
    os.killpg(0, signal.SIGKILL)  # whatever is left, this watchdog included


def others_in_group() -> list[int]:
    """Live (non-zombie) processes of our group other than this watchdog, read from /proc."""
    me, group, found = os.getpid(), os.getpgrp(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, pgrp = f.read().rsplit(")", 1)[1].split()[:3]  # after "pid (comm)"
        except OSError:  # it exited while we looked
            continue
        if int(pgrp) == group and state != "Z":
            found.append(int(entry))
    return found


def stop_orphans() -> None:
    """vLLM's API process is gone: SIGTERM the rest of the group, wait, SIGKILL the survivors (not us)."""
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while others_in_group() and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in others_in_group():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def main() -> int:
    # A handler, not SIG_IGN: handlers are reset on exec, so vLLM still gets the default SIGTERM behaviour.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)  # same stdout/stderr (the log), same group

    def watch_parent() -> None:
        while os.read(0, 4096):  # an empty read is end-of-file: the parent closed the pipe or died
            pass
        stop_group(server)

    threading.Thread(target=watch_parent, daemon=True).start()
    code = server.wait()
    stop_orphans()
    return code


if __name__ == "__main__":
    # os._exit, not sys.exit: the watching thread is still blocked in read() and must not delay or
    # break interpreter shutdown; vLLM's exit code becomes ours (negative = killed by that signal).
    code = main()
    os._exit(code if code >= 0 else 128 - code)
