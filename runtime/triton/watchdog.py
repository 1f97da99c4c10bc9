"""`python watchdog.py PIDFD PID TIMEOUT PREFIX`: the end of a server whose starter died.

`start_server` runs this file (the standard library alone, no package imported) beside each server,
in a session of its own, with a pipe on its stdin whose other end the starting process alone holds,
and the server held by a pidfd (PIDFD, opened by the starter while the server ran, so that a PID
reused after the server ended is never signalled). When the starting process ends, however it ends
(killed outright included), the pipe reads its end. A server still running then is sent SIGTERM (as
the kernel sends it at the starter's death, PR_SET_PDEATHSIG) and, where it has not ended within
TIMEOUT seconds, SIGKILL to its process group: a server stopping past its exit timeout with a request
in flight crashed inside its own shutdown and hung there, ignoring SIGTERM, for good. Once it has
ended, its shared-memory regions under PREFIX (`server.shm_prefix`) are removed.
"""
from __future__ import annotations

import os
import select
import signal
import sys
from pathlib import Path
from typing import Sequence

# Seconds the server's process group is given to end after SIGKILL.
KILL_GRACE_S = 10.0
SHM_DIR = Path("/dev/shm")
PREFIX_START = "medflow_serve_"


def _ended(handle: int, within: float) -> bool:
    """Whether the process the pidfd `handle` holds ends within `within` seconds."""
    poller = select.poll()
    poller.register(handle, select.POLLIN)
    return bool(poller.poll(max(0.0, within) * 1000))


def watch(handle: int, pid: int, timeout: float, prefix: str) -> None:
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


def remove_shm_regions(prefix: str) -> None:
    """Remove what a stopped server left in SHM_DIR under `prefix` (`server.shm_prefix`), its
    regions alone."""
    if not prefix.startswith(PREFIX_START):
        return
    for region in SHM_DIR.glob(f"{prefix}*"):
        try:
            region.unlink()
        except OSError:
            pass


def main(argv: Sequence[str]) -> int:
    if len(argv) != 4:
        print("usage: python watchdog.py PIDFD PID TIMEOUT PREFIX", file=sys.stderr)
        return 2
    watch(int(argv[0]), int(argv[1]), float(argv[2]), argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
