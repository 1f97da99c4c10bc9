"""The listener's storage folder: every received instance on disk before it is acknowledged, and one
state file per series saying how far it got, so that a listener restarted after a crash finishes
what the last one left.

    <storage>/series/<series uid>/<sop instance uid>.dcm   the instances received, written durably
    <storage>/series/<series uid>/.state.json             the series' state (below)
    <storage>/results/<series uid>.dcm                    its SEG, kept until delivered

A series' state is one of: `receiving` (instances arrive), `incomplete` (an association that sent
some of its instances was aborted, or the node stopped while one was sending it: it waits for the
series to be sent again), `processing`,
`processed` (its SEG is in results/, not yet delivered), `delivered`, `failed` (inference refused
it; the reason is kept).
Every write goes to a temporary file that is synced and then renamed into place, so a crash leaves
either the old file or the new one, never half of one. UIDs are checked before they name a file.
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from runtime.errors import InputError, OutputError

log = logging.getLogger("runtime.listen")

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID = 64
STATES = ("receiving", "incomplete", "processing", "processed", "delivered", "failed")
# States in which an instance sent again, unchanged, changes nothing: the series was taken whole.
SETTLED = ("processing", "processed", "delivered")
STATE_FILE = ".state.json"


@dataclass(frozen=True)
class SeriesState:
    """What the listener knows of one series (no patient name or ID: only UIDs and counts)."""

    series_uid: str
    study_uid: str
    calling_ae: str
    state: str = "receiving"
    instances: int = 0
    last_received: float = 0.0
    seg: str = ""               # the SEG's file name in results/, once processed
    attempts: int = 0           # deliveries tried
    next_attempt: float = 0.0   # when the next delivery may be tried (back-off)
    detail: str = ""            # why it failed, or the last delivery error
    revision: int = 0           # SEGs made of this series so far (a series that grew is made again)
    sending: int = 0            # 1 while an association that sent instances of it has not ended


class Conflict(InputError):
    """An instance sent again under a stored instance's UID with other contents."""


def check_uid(value: str, what: str) -> str:
    """A DICOM UID fit to name a file: digits and dots, at most 64 characters."""
    text = str(value or "").strip()
    if not (UID.match(text) and len(text) <= MAX_UID):
        raise InputError(f"{what} {text!r} is not a DICOM UID (digits and dots, at most {MAX_UID} characters).")
    return text


def write_durably(path: Path, data: bytes, sync: bool = True) -> None:
    """`data` at `path`, whole or not at all: a temporary file renamed into place, synced to disk
    first and the folder after (unless `sync` is False: whole or not at all still, but a crash
    may lose the newest version)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if sync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
        if not sync:
            return
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path} ({error.strerror or error}); check the storage folder.") from None


class Storage:
    """The storage folder of one listener."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.series_root = self.root / "series"
        self.results = self.root / "results"
        try:
            self.series_root.mkdir(parents=True, exist_ok=True)
            self.results.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise InputError(f"--storage {root}: cannot be made ({error.strerror or error}).") from None

    def folder(self, series_uid: str) -> Path:
        return self.series_root / check_uid(series_uid, "Series Instance UID")

    def store(self, series_uid: str, sop_uid: str, data: bytes) -> bool:
        """One instance's file, written durably (before the sender is told it was stored); whether
        it is new to the series. The same instance sent again, in any encoding, is taken as it is
        (the stored file kept); other contents under a stored instance's UID are refused
        (Conflict), never written over it."""
        folder = self.folder(series_uid)
        folder.mkdir(exist_ok=True)
        path = folder / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"
        if path.exists():
            if not same_instance(path.read_bytes(), data):
                raise Conflict(f"instance {sop_uid} is stored already with other contents; a changed instance "
                               "needs a new SOP Instance UID.")
            return False
        write_durably(path, data)
        return True

    def instances(self, series_uid: str) -> list[Path]:
        return sorted(p for p in self.folder(series_uid).glob("*.dcm") if not p.name.startswith("."))

    def state(self, series_uid: str) -> SeriesState | None:
        path = self.folder(series_uid) / STATE_FILE
        if not path.is_file():
            return None
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "revision" not in data and data.get("seg"):
                data = {**data, "revision": 1}         # written before revisions were counted: its SEG was the first
            found = SeriesState(**data)
            _check_types(found)
        except (OSError, ValueError, TypeError) as error:
            raise InputError(f"{path} cannot be read ({error}); remove the series folder to receive it "
                             "again.") from None
        if found.state not in STATES:
            raise InputError(f"{path}: state {found.state!r} is none of {', '.join(STATES)}.")
        return found

    def save(self, state: SeriesState, sync: bool = True) -> SeriesState:
        """Write a series' state; `sync` False for the count of instances received, which a
        restart rebuilds from the instances on disk (`recover`)."""
        folder = self.folder(state.series_uid)
        folder.mkdir(exist_ok=True)
        write_durably(folder / STATE_FILE, json.dumps(asdict(state), indent=1).encode("utf-8"), sync)
        return state

    def recover(self) -> list[SeriesState]:
        """At a start, what the last listener left: a series folder whose instances outnumber its
        state's count, or that has no state, was receiving when the node died, and one whose state
        says an association was still sending it had not seen that association end; such a series
        is incomplete (it may have been cut short) and waits to be sent again. The states so marked,
        their counts taken from the disk."""
        cut = []
        for folder in sorted(p for p in self.series_root.iterdir() if p.is_dir() and UID.match(p.name)):
            instances = self.instances(folder.name)
            count = len(instances)
            state = self.state(folder.name)
            if not count or (state is not None and state.state != "receiving"):
                continue
            if state is not None and state.instances == count and not state.sending:
                continue
            study, calling = (state.study_uid, state.calling_ae) if state is not None else (_study_of(instances[0]), "")
            found = SeriesState(series_uid=folder.name, study_uid=study, calling_ae=calling,
                                state="incomplete", instances=count, last_received=now(),
                                detail=f"the node stopped while an association was sending it ({count} instance(s) "
                                       "stored); send the series again",
                                revision=state.revision if state is not None else 0)
            cut.append(self.save(found))
        return cut

    def update(self, series_uid: str, **changes: Any) -> SeriesState:
        current = self.state(series_uid)
        if current is None:
            raise InputError(f"series {series_uid} has no state in {self.root}.")
        return self.save(replace(current, **changes))

    def all(self) -> list[SeriesState]:
        """Every series' state; one whose state file cannot be read is left out (and logged), so one
        damaged file stops no other series."""
        found = []
        for folder in sorted(p for p in self.series_root.iterdir() if p.is_dir() and UID.match(p.name)):
            try:
                state = self.state(folder.name)
            except InputError as error:
                log.error("series=%s step=skipped reason=%s", folder.name, error)
                continue
            if state is not None:
                found.append(state)
        return found


def same_instance(stored: bytes, sent: bytes) -> bool:
    """Whether `sent` holds the instance `stored` holds: the same bytes, or the same public
    attributes and the same pixels in another encoding (another transfer syntax, compressed or
    not, with or without group lengths, as a sender may resend it). Private attributes are not
    compared; bytes that cannot be decoded are no match."""
    if stored == sent:
        return True
    import io

    import numpy as np
    import pydicom

    try:
        first, second = (pydicom.dcmread(io.BytesIO(data), force=True) for data in (stored, sent))
        if "SOPInstanceUID" not in first or _public(first) != _public(second):
            return False
        if "PixelData" not in first or "PixelData" not in second:
            return "PixelData" not in first and "PixelData" not in second
        encodings = {first.file_meta.TransferSyntaxUID, second.file_meta.TransferSyntaxUID}
        if all(not pydicom.uid.UID(uid).is_compressed for uid in encodings) and first.PixelData == second.PixelData:
            return True
        return bool(np.array_equal(first.pixel_array, second.pixel_array))
    except Exception:  # noqa: BLE001 - pydicom and its decoders raise several kinds for data they cannot read
        return False


def _public(dataset: Any) -> dict:
    """A data set's public attributes but its pixels and group lengths, by tag: their values."""
    return {element.tag: element.value for element in dataset
            if not element.tag.is_private and element.tag.element != 0 and element.keyword != "PixelData"}


def now() -> float:
    return time.time()


def _check_types(state: SeriesState) -> None:
    """TypeError where a field of a state read from disk is not of its type, or names a SEG other
    than the series' own."""
    for field in fields(SeriesState):
        value = getattr(state, field.name)
        kind = {"int": int, "float": (int, float), "str": str}[str(field.type)]
        if isinstance(value, bool) or not isinstance(value, kind):
            raise TypeError(f"{field.name} is {value!r}")
    if state.seg not in ("", f"{state.series_uid}.dcm") or state.series_uid != check_uid(state.series_uid, "series"):
        raise TypeError(f"seg {state.seg!r} is not the series' own SEG")


def _study_of(path: Path) -> str:
    """The Study Instance UID of a stored instance (checked when it was received)."""
    import pydicom

    try:
        return str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
    except Exception:  # noqa: BLE001 - a file the crash cut short: its series is read again anyway
        return ""
