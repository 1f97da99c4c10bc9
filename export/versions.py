"""Allocating a model's next version: the build lock, stale staging folders and the staging folder.

Builds into one model folder may run at the same time. Each holds the model folder's lock file
`.build.lock` (`fcntl.flock`) only while it picks its version: it removes the staging folders of
killed builds (`runtime.staging`), takes the integer after every version folder and every live
build's staging folder, and makes its own staging folder. It builds without the lock and renames the
folder into place at the end, so builds started together get consecutive versions and all succeed.
An existing version is never replaced, and a failed build removes what it made.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterator

from export.config_merge import check_configs
from runtime.errors import OutputError
from runtime.staging import stale_folders, staging_folders, staging_name

log = logging.getLogger(__name__)

LOCK_FILE = ".build.lock"
# What may refuse a build its version number before anything is made: (model folder, version).
VersionCheck = Callable[[Path, int], None]


def next_version(model_dir: Path) -> int:
    """One more than the highest version folder or live build's staging folder in `model_dir`; 1 when none."""
    if not model_dir.is_dir():
        return 1
    versions = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    versions += [s.version for s in staging_folders(model_dir)]
    return max(versions, default=0) + 1


def _make_dirs(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; returns those created, deepest first."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the model folder {folder}: {exc.strerror or exc}.") from None
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _lock_once(path: Path) -> int | None:
    """A descriptor of `path` locked exclusively; None when the file was removed while waiting for it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(f"cannot open the build lock {path}: {exc.strerror or exc}.") from None
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except FileNotFoundError:
        pass
    os.close(fd)
    return None


@contextlib.contextmanager
def model_lock(model_dir: Path) -> Iterator[list[Path]]:
    """Hold the model folder's build lock, making the folder when missing; yields the folders made."""
    created: list[Path] = []
    fd = None
    while fd is None:
        created += _make_dirs(model_dir)
        fd = _lock_once(model_dir / LOCK_FILE)
    try:
        yield created
    finally:
        os.close(fd)


def _remove_stale(model_dir: Path) -> None:
    for staging in stale_folders(model_dir):
        shutil.rmtree(staging.path, ignore_errors=True)
        log.warning("removed stale staging folder %s: its build process %d is gone", staging.path, staging.pid)


def _discard(model_dir: Path, staging: Path, created: list[Path]) -> None:
    """Remove a failed build's staging folder, and the folders it made when nothing else is in them."""
    with model_lock(model_dir):
        shutil.rmtree(staging, ignore_errors=True)
        _drop_created(model_dir, created)


def _drop_created(model_dir: Path, created: list[Path]) -> None:
    """Under the build lock: the folders a build made, where nothing but the lock file is in them."""
    if created and [p.name for p in model_dir.iterdir()] == [LOCK_FILE]:
        (model_dir / LOCK_FILE).unlink()
        _remove_empty(created)


@contextlib.contextmanager
def staged_version(model_dir: Path, check: VersionCheck | None = None) -> Iterator[tuple[int, Path]]:
    """The next version number and a hidden staging folder beside it; on success the folder is renamed
    into place (an existing version is never replaced), on any error it is removed with the model
    and repository folders this build created. A model config.pbtxt that cannot be read (to keep its
    edits and digests) refuses the build before anything is made, and so may `check(model_dir,
    version)` (what else the build is to write has no room)."""
    with model_lock(model_dir) as created:
        _remove_stale(model_dir)
        version = next_version(model_dir)
        try:
            check_configs(model_dir)
            if check is not None:
                check(model_dir, version)
        except BaseException:
            _drop_created(model_dir, created)
            raise
        staging = model_dir / staging_name(version)
        try:
            staging.mkdir()
        except OSError as exc:
            raise OutputError(f"cannot create the staging folder {staging}: {exc.strerror or exc}.") from None
    final = model_dir / str(version)
    try:
        yield version, staging
        _publish(staging, final)
    except BaseException as exc:
        _discard(model_dir, staging, created)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write the model version {final}: {exc.strerror or exc}.") from None
        raise


def _publish(staging: Path, final: Path) -> None:
    if final.exists():
        raise OutputError(f"{final} appeared while this version was being built; build again for the next version.")
    os.rename(staging, final)
