"""`python -m runtime.triton.watchdog SERVER_PID TIMEOUT PREFIX`: the end of a server whose starter died.

`start_server` starts it beside each server, in a session of its own, with a pipe on its stdin whose
other end the starting process alone holds. When that process ends, however it ends (killed
outright included), the pipe reads its end. A server still running then is sent SIGTERM (as the
kernel sends it at the starter's death, PR_SET_PDEATHSIG) and, where it has not ended within
TIMEOUT seconds, SIGKILL to its process group: a server stopping past its exit timeout with a
request in flight crashed inside its own shutdown and hung there, ignoring SIGTERM, for good. Its
shared-memory regions under PREFIX (`server.shm_prefix`) are then removed. The server is held by a
pidfd from the start, so a PID reused after it ended is never signalled.
"""
from __future__ import annotations

import os
import select
import signal
import sys
from typing import Sequence

# Seconds past TIMEOUT the server's process group is given to end after SIGKILL.
KILL_GRACE_S = 10.0


def _ended(handle: int, within: float) -> bool:
    """Whether the process the pidfd `handle` holds ends within `within` seconds."""
    poller = select.poll()
    poller.register(handle, select.POLLIN)
    return bool(poller.poll(max(0.0, within) * 1000))


def watch(pid: int, timeout: float, prefix: str) -> None:
    from runtime.triton.server import remove_shm_regions

    try:
        handle = os.pidfd_open(pid)
    except OSError:                              # it ended already (or cannot be held): nothing to end
        return
    ended = False
    try:
        sys.stdin.buffer.read()                  # until the starter ends and its end of the pipe closes
        ended = _ended(handle, 0)
        if not ended:
            signal.pidfd_send_signal(handle, signal.SIGTERM)
            ended = _ended(handle, timeout)
        if not ended:
            os.killpg(pid, signal.SIGKILL)       # the group's leader still runs: its group is its own
            ended = _ended(handle, KILL_GRACE_S)
    except OSError:
        pass
    finally:
        os.close(handle)
    if ended:
        remove_shm_regions(prefix)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m runtime.triton.watchdog SERVER_PID TIMEOUT PREFIX", file=sys.stderr)
        return 2
    watch(int(argv[0]), float(argv[1]), argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
