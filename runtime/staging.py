"""Staging folders of model versions being built, and telling a live build's folder from a stale one.

`python -m export build` writes a version into a hidden folder beside its final place,
`.<version>.building-<pid>-<token>-<host>`, and renames it into place at the end. A build that is
killed on the way (kill -9, a power cut) leaves its folder behind. Such a folder is stale when the
process that made it is gone from this host: no process has its PID, the process is a zombie, or the
process now holding the PID started after the folder was last changed (the PID was reused). A
folder made on another host is never taken for stale, since its process cannot be seen from here.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

_PATTERN = re.compile(r"^\.(\d+)\.building-(\d+)-([0-9a-f]{8})(?:-(.+))?$")
START_SLACK_S = 2.0        # the start time read from /proc is exact to about a second


@dataclass(frozen=True)
class Staging:
    """One staging folder: the version it builds and the process and host that build it."""

    path: Path
    version: int
    pid: int
    host: str | None       # None for a folder named without its host: taken for this host

    def describe(self) -> str:
        return (f"stale staging folder {self.path} (version {self.version}; its build process {self.pid} is gone); "
                "the next `python -m export build` of this model removes it")


def host_name() -> str:
    """This host's name as staging folder names carry it."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def pid_namespace() -> int:
    """The inode of this process's PID namespace (0 where /proc does not tell): processes of two
    containers that share a host name see each other's PIDs only where it is the same."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def staging_name(version: int) -> str:
    """A staging folder name for `version`, built by this process on this host."""
    return f".{version}.building-{os.getpid()}-{secrets.token_hex(4)}-{host_name()}"


def staging_folders(model_dir: Path) -> list[Staging]:
    """Every staging folder in a model folder, by version."""
    found = []
    for path in Path(model_dir).iterdir() if Path(model_dir).is_dir() else ():
        match = _PATTERN.match(path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.append(Staging(path, int(match[1]), int(match[2]), match[4]))
    return sorted(found, key=lambda s: (s.version, s.path.name))


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return None


def _started(fields: list[str]) -> float | None:
    """A process's start time (seconds since the epoch) from its /proc stat fields."""
    boot = _boot_time()
    if boot is None or len(fields) < 20:
        return None
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def creator_gone(pid: int, host: str | None, path: Path) -> bool:
    """Whether the process `pid` on `host` (None: this host) that made `path` — a build's staging
    folder, an output staging folder — is gone (see the module documentation)."""
    if host is not None and host != host_name():
        return False
    if pid <= 0 or not _running(pid):
        return True
    fields = _proc_stat(pid)
    if fields is None:
        return False
    if fields[0] == "Z":
        return True
    started = _started(fields)
    try:
        changed = path.stat().st_mtime
    except OSError:
        return False
    return started is not None and started > changed + START_SLACK_S


def is_stale(staging: Staging) -> bool:
    """Whether the build process that made the staging folder is gone."""
    return creator_gone(staging.pid, staging.host, staging.path)


def stale_folders(model_dir: Path) -> list[Staging]:
    """The staging folders of a model folder whose build process is gone."""
    return [s for s in staging_folders(model_dir) if is_stale(s)]
