"""A compiled-model cache whose files are checked before a compiler may read them back.

OpenVINO loads a compiled model from its cache folder without checking it: a blob damaged on disk,
cut short by a killed write, or changed by hand would run as the model. Each model gets a folder
of its own (named by its file's sha256), the sha256 of every blob compiled into it is recorded
there, and before each compile every blob that is not exactly as recorded is removed, so the
compiler compiles afresh instead of reading it. Processes sharing the cache take turns on a
model's folder (a lock file), so one never removes a blob another has just compiled and not yet
recorded; a folder that cannot be locked, read or changed is not used (the model is compiled
without a cache).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from runtime.jsonfile import Unreadable, read_json
from runtime.manifest import sha256_of

log = logging.getLogger(__name__)

RECORD = "sha256.json"
MAX_RECORD_BYTES = 2**20        # a sha256 per blob of one model's cache
LOCK = ".lock"
BLOB_SUFFIX = ".blob"


class Unusable(Exception):
    """The cache folder cannot be locked, read or changed; compile without it."""


@contextmanager
def guarded(folder: Path) -> Iterator[None]:
    """Hold the model folder's lock, with its blobs checked (`checked`), while the caller compiles;
    record what it compiled after. Unusable where the folder cannot be used."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            handle = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            handle = os.open(folder / LOCK, os.O_RDONLY)         # a cache on a read-only disk, made before
    except OSError as error:
        raise Unusable(f"{folder}: {error.strerror or error}") from None
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX)
            kept = checked(folder)
        except ImportError:
            raise Unusable("no file locks on this system") from None
        except OSError as error:              # a file system without locks (NFS without its lock service)
            raise Unusable(f"{folder}: {error.strerror or error}") from None
        yield
        record(folder, kept)
    finally:
        os.close(handle)


def model_folder(cache: Path, model_path: Path) -> Path:
    """The model's own folder in the cache, named by the model file's sha256."""
    return Path(cache) / sha256_of(model_path)[:32]


def _recorded(folder: Path) -> dict[str, str]:
    try:
        data = read_json(folder / RECORD, MAX_RECORD_BYTES)
    except Unreadable:
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if isinstance(key, str) and isinstance(value, str)}


def checked(folder: Path) -> dict[str, str]:
    """Remove every blob of `folder` whose sha256 is not the one recorded for it (unrecorded, changed,
    damaged); returns the record of those kept."""
    recorded, kept = _recorded(folder), {}
    for blob in sorted(folder.glob(f"*{BLOB_SUFFIX}")):
        if not blob.is_file():
            raise OSError(f"{blob} is not a file")
        digest = sha256_of(blob)
        if recorded.get(blob.name) == digest:
            kept[blob.name] = digest
            continue
        log.warning("compiled-model cache file %s is not as it was written (%s); it is removed and the model "
                    "compiled again", blob, "changed or damaged" if blob.name in recorded else "not recorded")
        blob.unlink(missing_ok=True)
    return kept


def record(folder: Path, kept: dict[str, str]) -> None:
    """Record the blobs compiled since `checked` (those it did not keep) beside the ones it kept."""
    entries = dict(kept)
    temporary = folder / f".{RECORD}.{secrets.token_hex(4)}"
    try:
        for blob in folder.glob(f"*{BLOB_SUFFIX}"):
            if blob.name not in entries and blob.is_file():
                entries[blob.name] = sha256_of(blob)
        if entries == kept:
            return                                  # nothing compiled: the record stands
        temporary.write_text(json.dumps(entries, sort_keys=True), encoding="utf-8")
        os.replace(temporary, folder / RECORD)
    except OSError as error:
        log.warning("the compiled-model cache record in %s cannot be written (%s); its blobs will be compiled "
                    "again next time", folder, error)
    finally:
        temporary.unlink(missing_ok=True)
