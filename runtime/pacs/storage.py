"""The listener's storage folder: every received instance on disk before it is acknowledged, and one
state file per series saying how far it got, so that a listener restarted after a crash finishes
what the last one left.

    <storage>/series/<series uid>/<sop instance uid>.dcm   the instances received, written durably
    <storage>/series/<series uid>/.state.json             the series' state (below)
    <storage>/instances/<sop instance uid>                 the series UID it was stored under
    <storage>/results/<series uid>.dcm                    its SEG (or a classifier's SR), kept
    <storage>/results/<series uid>.sr.dcm                 with `--report`, the SR of its SEG's volumes

A series' state is one of: `receiving` (instances arrive), `incomplete` (an association that sent
some of its instances was aborted, or the node stopped while one was sending it: it waits for the
series to be sent again by an association begun after that; or an instance of it was refused: it
waits for that instance, named in `missing`), `processing`,
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
from runtime.jsonfile import Unreadable, read_json

log = logging.getLogger("runtime.listen")

UID = re.compile(r"^[0-9]+(\.[0-9]+)*\Z")
MAX_UID = 64
STATES = ("receiving", "incomplete", "processing", "processed", "delivered", "failed")
# States in which an instance sent again, unchanged, changes nothing: the series was taken whole.
SETTLED = ("processing", "processed", "delivered")
STATE_FILE = ".state.json"
MAX_STATE_BYTES = 2**20          # a series' state: a few fields and the names of its outputs
LOCK_FILE = ".listener.lock"     # held by the listener that uses the folder
INDEXED = ".indexed"             # in instances/: every instance stored is in the index


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
    attempts: int = 0           # tries of its step: to make its result (receiving again), then to deliver it
    next_attempt: float = 0.0   # when the next delivery may be tried (back-off)
    detail: str = ""            # why it failed, or the last delivery error
    revision: int = 0           # SEGs made of this series so far (a series that grew is made again)
    sending: int = 0            # 1 while an association that sent instances of it has not ended
    missing: str = ""           # the SOP Instance UIDs refused, space-separated: it waits for each of them


class Conflict(InputError):
    """An instance sent again under a stored instance's UID with other contents."""


class StoredElsewhere(Conflict):
    """An instance whose UID is stored in another series: its own series lacks it."""


def check_uid(value: str, what: str) -> str:
    """A DICOM UID fit to name a file: digits and dots, at most 64 characters."""
    text = str(value or "").strip()
    if not (UID.match(text) and len(text) <= MAX_UID):
        raise InputError(f"{what} {text[:80]!r}{'…' if len(text) > 80 else ''} is not a DICOM UID (digits and dots, "
                         f"at most {MAX_UID} characters).")
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
        self.index = self.root / "instances"
        self._held: Any = None
        self._told: dict[str, str] = {}       # series whose state file cannot be read -> the reason logged
        try:
            self.series_root.mkdir(parents=True, exist_ok=True)
            self.results.mkdir(parents=True, exist_ok=True)
            self.index.mkdir(exist_ok=True)
        except OSError as error:
            raise InputError(f"--storage {root}: cannot be made ({error.strerror or error}).") from None
        if not (self.index / INDEXED).exists():
            self._index_stored()

    def hold(self) -> None:
        """This process's claim on the folder, for as long as it runs (or until `let_go`): a second
        listener on the same folder is refused before it changes anything (InputError)."""
        import fcntl

        if self._held is not None:
            return
        path = self.root / LOCK_FILE
        try:
            handle = open(path, "a+", encoding="utf-8")
        except OSError as error:
            raise InputError(f"--storage {self.root}: {path.name} cannot be opened ({error.strerror or error}).") \
                from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip()[:20]
            handle.close()
            raise InputError(f"--storage {self.root} is in use by another runtime listen (process {holder or '?'}); "
                             "stop it first, or give this node a storage folder of its own.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._held = handle

    def let_go(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def folder(self, series_uid: str) -> Path:
        return self.series_root / check_uid(series_uid, "Series Instance UID")

    def store(self, series_uid: str, sop_uid: str, data: bytes) -> bool:
        """One instance's file, written durably (before the sender is told it was stored); whether
        it is new to the series. The same instance sent again, in any encoding, is taken as it is
        (the stored file kept); other contents under a stored instance's UID are refused
        (Conflict), never written over it."""
        if self.holds(series_uid, sop_uid, data):
            return False
        write_durably(self._instance(series_uid, sop_uid), data)
        write_durably(self.index / sop_uid, series_uid.encode("ascii"), sync=False)
        return True

    def holds(self, series_uid: str, sop_uid: str, data: bytes) -> bool:
        """Whether the instance `data` is stored already (Conflict where other contents are
        stored under its UID, or the UID is stored in another series)."""
        path = self._instance(series_uid, sop_uid)
        if not path.exists():
            elsewhere = self._stored_in(sop_uid)
            if elsewhere not in (None, series_uid):
                raise StoredElsewhere(f"instance {sop_uid} is stored already in series {elsewhere}; an instance of "
                                      "another series needs a SOP Instance UID of its own")
            return False
        if not same_instance(path.read_bytes(), data):
            raise Conflict(f"instance {sop_uid} is stored already with other contents; a changed instance "
                           "needs a new SOP Instance UID.")
        return True

    def _stored_in(self, sop_uid: str) -> str | None:
        """The series an instance of UID `sop_uid` is stored in (None: in none, or in one whose
        file was removed since, as a retention rule prunes delivered series)."""
        try:
            series_uid = (self.index / sop_uid).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError):
            return None
        if not UID.match(series_uid) or not (self.series_root / series_uid / f"{sop_uid}.dcm").exists():
            return None
        return series_uid

    def _index_stored(self) -> None:
        """The index of a storage folder written before instances were indexed: each stored
        instance's series."""
        for folder in self.series_root.iterdir():
            if folder.is_dir() and UID.match(folder.name):
                for path in folder.glob("*.dcm"):
                    if not path.name.startswith(".") and UID.match(path.stem):
                        write_durably(self.index / path.stem, folder.name.encode("ascii"), sync=False)
        write_durably(self.index / INDEXED, b"", sync=True)

    def _instance(self, series_uid: str, sop_uid: str) -> Path:
        folder = self.folder(series_uid)
        folder.mkdir(exist_ok=True)
        return folder / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"

    def instances(self, series_uid: str) -> list[Path]:
        return sorted(p for p in self.folder(series_uid).glob("*.dcm") if not p.name.startswith("."))

    def state(self, series_uid: str) -> SeriesState | None:
        path = self.folder(series_uid) / STATE_FILE
        try:
            data: Any = read_json(path, MAX_STATE_BYTES)
        except Unreadable as error:
            if error.kind == "missing":                # none yet (or gone since): the series is new
                return None
            raise InputError(f"{path} cannot be read ({error}); remove the series folder to receive it "
                             "again.") from None
        try:
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
        """At a start, what the last listener left: a series whose instances on disk are not the
        count its state says (or that has no state) was receiving when the node died, and one whose
        state says an association was still sending it never saw that association end; such a
        series is incomplete (it may have been cut short) and waits to be sent again. The states so
        marked, their counts taken from the disk. A state file that cannot be read is logged and
        left, as `all` does."""
        cut = []
        for folder in sorted(p for p in self.series_root.iterdir() if p.is_dir() and UID.match(p.name)):
            instances = self.instances(folder.name)
            count = len(instances)
            try:
                state = self.state(folder.name)
            except InputError as error:
                self._unreadable(folder.name, error)
                continue
            if not count or (state is not None and state.instances == count
                             and not (state.state == "receiving" and state.sending)):
                continue
            if state is not None and state.state == "incomplete":
                self.save(replace(state, instances=count))
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

    def _unreadable(self, series_uid: str, error: InputError) -> None:
        """A series whose state file cannot be read, logged once (the worker and the delivery look
        at every series ten times a second), and again only once its reason changes."""
        reason = str(error)
        if self._told.get(series_uid) != reason:
            self._told[series_uid] = reason
            log.error("series=%s step=skipped reason=%s", series_uid, reason)

    def all(self) -> list[SeriesState]:
        """Every series' state; one whose state file cannot be read is left out (and logged), so one
        damaged file stops no other series."""
        found = []
        for folder in sorted(p for p in self.series_root.iterdir() if p.is_dir() and UID.match(p.name)):
            try:
                state = self.state(folder.name)
            except InputError as error:
                self._unreadable(folder.name, error)
                continue
            if state is not None:
                found.append(state)
        return found


def same_instance(stored: bytes, sent: bytes) -> bool:
    """Whether `sent` holds the instance `stored` holds: the same bytes, or the same public
    attributes and the same pixels in another encoding (another transfer syntax, compressed
    losslessly or not compressed, with or without group lengths, as a sender may resend it).
    Private attributes are not compared; data that cannot be decoded, or whose compressed frames
    claim another size than the instance's rows and columns, are no match."""
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
        syntaxes = [pydicom.uid.UID(d.file_meta.TransferSyntaxUID) for d in (first, second)]
        if not any(uid.is_compressed for uid in syntaxes) and len({uid.is_little_endian for uid in syntaxes}) == 1:
            return bool(first.PixelData == second.PixelData)
        if not all(_frames_fit(d, uid) for d, uid in zip((first, second), syntaxes)):
            return False
        return bool(np.array_equal(first.pixel_array, second.pixel_array))
    except Exception:  # noqa: BLE001 - pydicom and its decoders raise several kinds for data they cannot read
        return False


def _public(dataset: Any) -> dict:
    """A data set's public attributes but its pixels and group lengths, by tag, at every depth:
    their values (sequences as their items' attributes), whatever their encoding's VR."""
    from pydicom.filewriter import correct_ambiguous_vr

    correct_ambiguous_vr(dataset, True)
    return {element.tag: _value(element) for element in dataset
            if not (element.tag.is_private or element.tag.element == 0 or element.keyword == "PixelData")}


def _value(element: Any) -> Any:
    """An attribute's value as it compares across encodings: a sequence as its items' attributes,
    16-bit words as their little-endian bytes (an implicit VR reads `US or OW` as bytes, an
    explicit one as numbers)."""
    import numpy as np

    if element.VR == "SQ":
        return tuple(_public(item) for item in element.value)
    value = element.value
    if element.VR in WORDS and not isinstance(value, (bytes, bytearray)):
        values = [] if value is None else [value] if isinstance(value, int) else list(value)
        return np.asarray(values, "<i2" if element.VR == "SS" else "<u2").tobytes()
    return value


WORDS = ("US", "SS", "OW", "US or SS", "US or OW", "US or SS or OW")
JPEG_FRAME_MARKERS = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}     # SOFn, and JPEG-LS's SOF55
J2K_SIZ = b"\xff\x51"


def _frames_fit(dataset: Any, syntax: Any) -> bool:
    """Whether decoding `dataset`'s pixels allocates what its attributes say, within a quarter of
    the memory budget: every compressed frame says it is `Rows` x `Columns` (a JPEG or JPEG-LS
    frame header, a JPEG 2000 SIZ segment; RLE is decoded to the data set's own size). A frame
    claiming another size is not decoded. True for pixels not compressed."""
    from pydicom.encaps import generate_frames
    from pydicom.uid import RLELossless

    from runtime.budget import memory_budget

    if not syntax.is_compressed:
        return True
    size = (int(dataset.Rows), int(dataset.Columns))
    frames = int(dataset.get("NumberOfFrames") or 1)
    samples = int(dataset.get("SamplesPerPixel") or 1)
    decoded = size[0] * size[1] * frames * samples * -(-int(dataset.BitsAllocated) // 8)
    if decoded > memory_budget() // 4:
        return False
    return syntax == RLELossless or all(_frame_size(frame) == size
                                        for frame in generate_frames(dataset.PixelData, number_of_frames=frames))


def _frame_size(frame: bytes) -> tuple[int, int] | None:
    """(rows, columns) a JPEG, JPEG-LS or JPEG 2000 codestream declares, or None."""
    import struct

    if frame.startswith(b"\xff\x4f" + J2K_SIZ) and len(frame) >= 24:               # SOC, then SIZ
        width, height, x0, y0 = struct.unpack(">IIII", frame[8:24])
        return height - y0, width - x0
    at = 2 if frame.startswith(b"\xff\xd8") else None                             # SOI
    while at is not None and at + 9 <= len(frame):
        if frame[at] != 0xFF:
            return None
        marker, length = frame[at + 1], struct.unpack(">H", frame[at + 2:at + 4])[0]
        if marker in JPEG_FRAME_MARKERS:
            return struct.unpack(">HH", frame[at + 5:at + 9])
        at += 2 + length
    return None


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
