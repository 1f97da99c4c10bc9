"""The Python-backend stubs of a running tritonserver, checked for one that died.

Each model instance of the Python backend runs in a stub process, a child of the server. A stub
that dies (killed for memory, say) leaves its model answering every request with "Stub process
... is not healthy", while the server's readiness endpoints still answer 200: this Triton neither
starts the stub again nor says so. The server never reaps a stub that died (one that an unload
ends is reaped at once), so a dead stub stays a zombie child of the server, and that is what is
looked for, in /proc (Linux). `runtime serve` watches its server so (`watch`) and stops it once a
stub died; `python -m runtime.triton.stubs` is the same check for a server started otherwise (a
container's liveness probe): exit status 1 and one `error:` line naming the dead stub.
"""
from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InputError

log = logging.getLogger(__name__)

PROC = Path("/proc")
NAME_CHARS = 15                      # the kernel keeps a process's name to 15 characters
STUB = "triton_python_backend_stub"[:NAME_CHARS]
SERVER = "tritonserver"
# Seconds between two looks at the stubs; a stub found a zombie at two looks in a row died (a stub
# an unload ends is a zombie only until the server reaps it, at once).
WATCH_S = 2.0


@dataclass(frozen=True)
class Process:
    pid: int
    name: str       # as the kernel keeps it: 15 characters at most
    state: str      # R, S, D, ...; Z: ended, and not reaped by its parent
    parent: int


def processes(proc: Path = PROC) -> list[Process]:
    """Every process this one can see, from /proc/<pid>/stat (none without a /proc)."""
    found = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text(errors="replace")
        except OSError:                                  # it ended meanwhile
            continue
        head, _, tail = text.rpartition(")")
        fields = tail.split()
        if len(fields) >= 2 and fields[1].isdigit():
            found.append(Process(int(entry.name), head.partition("(")[2], fields[0], int(fields[1])))
    return found


def dead_stubs(server: int, seen: list[Process]) -> set[int]:
    """The stubs of the server `server` that ended and were not reaped: zombies."""
    return {p.pid for p in seen if p.parent == server and p.name == STUB and p.state in ("Z", "X")}


def stub_model(pid: int, proc: Path = PROC) -> str | None:
    """The model and version a live stub serves, from the model.py its command line names
    (`<repository>/<model>/<version>/model.py`); None where it cannot be read."""
    try:
        words = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if len(words) < 2 or not words[1].endswith(b"model.py"):
        return None
    path = Path(words[1].decode(errors="replace"))
    return f"{path.parent.parent.name} version {path.parent.name}"


class StubCheck:
    """Looks at one server's stubs again and again: remembers the model of each live stub (a
    zombie's command line is gone) and says which stubs were zombies at two looks in a row."""

    def __init__(self, server: int) -> None:
        self.server = server
        self.models: dict[int, str] = {}
        self._zombies: set[int] = set()

    def look(self, seen: list[Process]) -> list[str]:
        """The stubs found zombies at this look and at the one before (they died): one
        description each."""
        for p in seen:
            if p.parent == self.server and p.name == STUB and p.pid not in self.models and p.state not in ("Z", "X"):
                model = stub_model(p.pid)
                if model is not None:
                    self.models[p.pid] = model
        zombies = dead_stubs(self.server, seen)
        dead, self._zombies = sorted(zombies & self._zombies), zombies
        return [f"the Python-backend stub of model {self.models[pid]} (process {pid})" if pid in self.models
                else f"a Python-backend stub (process {pid}; a dead one's model is not known)" for pid in dead]


def watch(process: subprocess.Popen, every_s: float = WATCH_S) -> threading.Thread:
    """A thread that looks at the stubs of the server `process` every `every_s` seconds while it
    runs, and stops it (SIGTERM) once one died, saying which: its model would fail every request
    while the server answers ready, so it is better gone, for what runs it (systemd's Restart=,
    Kubernetes) to start it again."""
    thread = threading.Thread(target=_watch, args=(process, every_s), name="stub-watch", daemon=True)
    thread.start()
    return thread


def _watch(process: subprocess.Popen, every_s: float) -> None:
    check = StubCheck(process.pid)
    while process.poll() is None:
        dead = check.look(processes())
        if dead:
            log.warning("%s died: every request to that model fails, while the server still answers ready; "
                        "stopping the server, for what runs runtime serve to start it again", "; ".join(dead))
            process.stopped_because = f"{'; '.join(dead)} died"          # type: ignore[attr-defined]
            process.terminate()
            return
        time.sleep(every_s)


def check_servers(pids: list[int], every_s: float = 0.5) -> list[str]:
    """What died among the stubs of the servers `pids` (every tritonserver this process sees where
    none are given), from two looks `every_s` apart; InputError where no such server runs."""
    seen = processes()
    running = [p.pid for p in seen if p.name == SERVER and (not pids or p.pid in pids) and p.state not in ("Z", "X")]
    if not running:
        named = f" with process ID {', '.join(map(str, pids))}" if pids else ""
        raise InputError(f"no tritonserver{named} runs here; start the server first.")
    checks = [StubCheck(pid) for pid in running]
    for check in checks:
        check.look(seen)
    time.sleep(every_s)
    seen = processes()
    return [line for check in checks for line in check.look(seen)]


def main(argv: list[str]) -> int:
    """`python -m runtime.triton.stubs [PID ...]`: exit status 0 while every Python-backend stub
    of the servers (every tritonserver this user sees, where no PID is given) lives, else 1 with
    one `error:` line."""
    try:
        if not all(word.isdigit() for word in argv):
            raise InputError(f"{' '.join(argv)}: give the process IDs of tritonservers, or none for every one "
                             "running here.")
        dead = check_servers([int(word) for word in argv])
    except InputError as error:
        print(f"error: {error}")
        return 1
    if dead:
        print(f"error: {'; '.join(dead)} died: every request to that model fails; restart the server.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
