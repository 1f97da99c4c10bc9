"""`runtime listen`: a DICOM node that receives series, segments them and sends the SEG back (a
classification or regression model: a DICOM SR of its findings, handled as a SEG is).

A C-STORE SCP (pynetdicom) accepts associations only from the allowed calling AE titles and writes
each instance to the storage folder, durably, before it answers success (runtime.pacs.storage). A
worker looks at the stored series ten times a second: a series nothing has arrived for during the
idle time, and that no open association is still sending, is complete; it is read (every check of
`runtime predict`), segmented, and its DICOM SEG kept in the storage folder. A second thread sends
the SEGs so kept to the destination with C-STORE, again and again with back-off (1 s, 2 s, 4 s, ...
up to a minute) while the destination refuses, is down or does not answer, so that a hung
destination holds up no segmentation. A series whose association was aborted (by either side, or as
its connection dropped), or that an association was sending when the node died, is incomplete and
waits to be sent again; an instance sent again unchanged changes nothing once its series was taken
whole, and a series that gains instances after its SEG is made again, as the next revision (its own
SEG series number). A listener
started on a storage folder finishes what the last one left: series received but not processed,
and SEGs not delivered. A non-image object is answered success and skipped; an instance that
cannot be decoded, or lacks its UIDs, is refused; a series inference refuses is marked failed.
Each step is one log line naming the study and series by UID, never the patient.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from runtime.errors import InputError, MedflowError, OutputError
from runtime.pacs.storage import (
    SETTLED, Conflict, SeriesState, Storage, StoredElsewhere, check_uid, now, write_durably,
)
from runtime.predict import Model, Prediction
from runtime.triton.client import ServerUnavailable

if TYPE_CHECKING:
    from runtime.io import Scan
    from runtime.manifest import Manifest
    from runtime.triton.scans import ServedScans

log = logging.getLogger("runtime.listen")

# C-STORE statuses: success, out of resources, data set does not match SOP class, cannot understand.
SUCCESS, OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xA900, 0xC000
DUPLICATE_DIFFERS = 0x0111          # Duplicate SOP Instance: other contents under a stored instance's UID
PROCESSING_FAILURE = 0x0110         # the series the instance names is held for another study
POLL_S = 0.1
DEFLATED = "1.2.840.10008.1.2.1.99"
# Seconds the node waits for the destination to answer before it counts the attempt as failed.
NETWORK_TIMEOUT_S = 30.0
MAX_BACKOFF_S = 60.0
# Seconds an association may stay idle before the node closes it (an abort, which pynetdicom sends
# for an idle one); what it had sent is then taken as complete, as after a release.
ASSOCIATION_IDLE_S = 60.0
# Seconds a stopping listener lets open associations end by themselves before it aborts them.
STOP_GRACE_S = 30.0
AE_TITLE_CHARS = 16
# Refused instances a series waits for, at most (their UIDs are kept in its state file).
MAX_MISSING = 256
# What a sender can do about a series cut short by a refused instance.
RESEND = ("send the whole series again (a sender that stops at a refused instance never sent those after "
          "it)")
# What a sender can do about a series that mixes modalities.
MIXED = ("the series mixes modalities: send it again with that instance of the node's modality, or runtime "
         "listen --retry it to segment the instances it has")
# Series remembered as skipped for their modality (each is said once while remembered).
MAX_PASSED_OVER = 1024
MODALITY = re.compile(r"[A-Z0-9_]{1,16}\Z")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int


def parse_destination(text: str) -> Destination:
    """`AE@host:port`, the node the SEGs go to."""
    title, at, rest = text.partition("@")
    host, _, port = rest.rpartition(":")
    if not (at and title and host and port.isdigit()):
        raise InputError(f"--send-to {text!r}: give AE@host:port, e.g. PACS@127.0.0.1:4242.")
    if not 0 < int(port) < 65536:
        raise InputError(f"--send-to {text!r}: port {port} is out of range (1 to 65535).")
    return Destination(check_ae_title(title, "--send-to"), host, int(port))


def parse_modalities(text: str | None) -> frozenset[str] | None:
    """`--modality CT` or `CT,MR`: DICOM Modality codes (None where not given: every modality)."""
    if text is None:
        return None
    codes = [code.strip().upper() for code in text.split(",")]
    bad = [code for code in codes if not MODALITY.match(code)]
    if bad or not codes:
        raise InputError(f"--modality {text!r}: give DICOM Modality codes separated by commas, e.g. CT or CT,MR "
                         "(capitals, digits and _, at most 16 each).")
    return frozenset(codes)


def check_ae_title(title: str, option: str) -> str:
    text = title.strip()
    if not text or len(text) > AE_TITLE_CHARS or "\\" in text or not text.isprintable():
        raise InputError(f"{option} {title!r}: an AE title is 1 to {AE_TITLE_CHARS} printable characters, "
                         "no backslash.")
    return text


class Listener:
    """One listening node: its model, its storage folder, who may send and where SEGs go."""

    def __init__(self, model: Model | ServedScans, storage: Storage, ae_title: str, allow: list[str],
                 destination: Destination, idle_s: float = 10.0, association_idle_s: float = ASSOCIATION_IDLE_S,
                 report: bool = False, modalities: frozenset[str] | None = None, uid_root: str | None = None) -> None:
        """`model`: run here, or by a Triton server (ServedScans). `report`: a segmentation model's
        node also sends the SR of each segment's volume with its SEG. `modalities`: the DICOM
        Modality values of the series it segments (None: every one); others are skipped.
        `uid_root`: the root of the new UIDs of its SEGs and SRs (highdicom's where None)."""
        self.model, self.storage, self.ae_title, self.report = model, storage, ae_title, report
        self.modalities, self.uid_root = modalities, uid_root
        self._passed_over: dict[str, tuple[str, str]] = {}   # series -> (SOP UID, modality) of an instance
        #                                                      skipped for its modality, the newest last
        self.allow, self.destination, self.idle_s = allow, destination, idle_s
        self.association_idle_s = association_idle_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server: Any = None
        self._threads: list[threading.Thread] = []
        self._outgoing: Any = None                   # the association a SEG is being sent over
        self._open: dict[Any, set[str]] = {}     # open associations -> the series they stored into
        self._told: dict[Any, set[str]] = {}     # open associations -> the series said to be sent again
        self._order = itertools.count(1)         # associations and aborts in the order this node saw them
        self._began: dict[Any, int] = {}         # open associations -> their place in that order
        self._aborted: dict[str, int] = {}       # series cut short by an abort -> its place in that order
        self._refused: dict[str, SeriesState] = {}   # series cut short whose incomplete state is not yet on disk

    # ------------------------------------------------------------------ receiving

    def start(self, address: str, port: int) -> None:
        """Listen on (address, port) and start the worker and the delivery; returns at once."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        ae.require_calling_aet = list(self.allow)
        ae.require_called_aet = True                           # a sender must call this node by its title
        ae.network_timeout = self.association_idle_s
        syntaxes = [uid for uid in ALL_TRANSFER_SYNTAXES if uid != DEFLATED]   # inflated whole, without a bound
        for context in AllStoragePresentationContexts:          # compressed series too (JPEG 2000, JPEG lossless)
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        ae.add_supported_context(Verification)
        self.storage.hold()
        for state in self.storage.recover():
            log.warning("study=%s series=%s step=incomplete instances=%d reason=the node stopped while an association "
                        "was sending it; the series waits to be sent again", state.study_uid, state.series_uid,
                        state.instances)
        try:
            self._server = ae.start_server((address, port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store),
                                                         (evt.EVT_ESTABLISHED, self._on_established),
                                                         (evt.EVT_REJECTED, self._on_rejected),
                                                         (evt.EVT_ACSE_RECV, self._on_acse),
                                                         (evt.EVT_RELEASED, self._on_released),
                                                         (evt.EVT_ABORTED, self._on_cut_off)])
        except OSError as error:
            raise InputError(f"cannot listen on {address}:{port} ({error.strerror or error}); is the port "
                             "taken?") from None
        self._threads = [threading.Thread(target=self._loop, args=(self.step, "worker-error"), name="listen-worker",
                                          daemon=True),
                         threading.Thread(target=self._loop, args=(self.deliver_due, "delivery-error"),
                                          name="listen-delivery", daemon=True)]
        for thread in self._threads:
            thread.start()

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop listening; let the associations still open end by themselves for up to `grace_s`
        seconds (abort the others: their series wait to be sent again), then stop the worker; a
        SEG being sent is cut off (it is sent again at the next start)."""
        self._stop.set()
        self._cut_outgoing()
        if self._server is not None:
            active = list(self._server.active_associations)
            self._server.shutdown()
            if active:
                log.info("step=stopping open_associations=%d (waiting up to %.0f s for them to end)", len(active),
                         grace_s)
            deadline = time.monotonic() + grace_s
            for assoc in active:
                assoc.join(timeout=max(0.0, deadline - time.monotonic()))
            for assoc in active:
                if assoc.is_alive():
                    assoc.abort()
        for thread in self._threads:
            thread.join(timeout=60)
        with self._lock:
            for series in list(self._refused):
                self._write_refused(series)
        self.storage.let_go()

    def _on_store(self, event: Any) -> int:
        calling = printable(str(event.assoc.requestor.ae_title).strip())
        try:
            dataset = event.dataset
            dataset.file_meta = event.file_meta
            study = check_uid(dataset.get("StudyInstanceUID", ""), "Study Instance UID")
            series = check_uid(dataset.get("SeriesInstanceUID", ""), "Series Instance UID")
            sop = check_uid(dataset.get("SOPInstanceUID", "") or event.request.AffectedSOPInstanceUID,
                            "SOP Instance UID")
        except InputError as error:
            log.warning("step=refused from=%s reason=%s", calling, error)
            return MISMATCH
        except Exception as error:  # noqa: BLE001 - pydicom raises several kinds for a data set it cannot decode
            log.warning("step=refused from=%s reason=cannot decode (%s)", calling, type(error).__name__)
            return CANNOT_UNDERSTAND
        passed_over = _not_segmented(dataset)
        if passed_over:
            log.info("study=%s series=%s step=skipped from=%s reason=%s (SOP class %s)", study, series, calling,
                     passed_over, printable(dataset.get("SOPClassUID", "?")))
            return SUCCESS
        modality = str(dataset.get("Modality", "") or "").strip().upper()
        if self.modalities is not None and modality not in self.modalities:
            self._pass_over(series, study, calling, modality, sop)
            return SUCCESS
        problem = _pixel_problem(dataset)
        if problem:
            self._cut_short(series, study, calling, sop, f"instance {sop} was refused: it {problem}")
            return CANNOT_UNDERSTAND
        data = event.encoded_dataset(include_meta=True)
        try:
            held = self.storage.holds(series, sop, data)           # a resend is compared outside the lock
            with self._lock:
                clash = self._other_study(series, study)
                if clash:
                    log.warning("study=%s series=%s step=refused from=%s reason=%s", study, series, calling, clash)
                    return PROCESSING_FAILURE
                new = not held and self.storage.store(series, sop, data)
                state = self._refused.get(series) or self.storage.state(series) or SeriesState(
                    series_uid=series, study_uid=study, calling_ae=calling)
                if not new and state.state in SETTLED:
                    return self._resent(event.assoc, state, calling)
                self._open.setdefault(event.assoc, set()).add(series)
                if state.state == "incomplete":
                    missing = " ".join(uid for uid in state.missing.split() if uid != sop)
                    state = replace(state, missing=missing)
                    if missing or self._began.get(event.assoc, 0) < self._aborted.get(series, 0):
                        return self._still_incomplete(event.assoc, state, calling)
                first = state.instances == 0 or state.state != "receiving"
                count = state.instances + new if state.state == "receiving" else len(self.storage.instances(series))
                self.storage.save(SeriesState(series_uid=series, study_uid=study, calling_ae=calling,
                                              state="receiving", instances=count, last_received=now(),
                                              revision=state.revision, sending=1), sync=False)
                self._refused.pop(series, None)
                self._aborted.pop(series, None)
        except StoredElsewhere as error:             # the series lacks it: no SEG of the rest
            self._cut_short(series, study, calling, sop, f"instance {sop} was refused: {error}",
                            "send the series again with UIDs of its own, or runtime listen --retry it to segment "
                            "the instances it has")
            return DUPLICATE_DIFFERS
        except Conflict as error:
            log.warning("study=%s series=%s step=refused from=%s reason=%s", study, series, calling, error)
            return DUPLICATE_DIFFERS
        except (MedflowError, OSError) as error:
            log.error("study=%s series=%s step=store-failed reason=%s", study, series, error)
            self._cut_short(series, study, calling, sop, f"instance {sop} could not be stored ({error})")
            return OUT_OF_RESOURCES
        if first:
            log.info("study=%s series=%s step=receiving from=%s", study, series, calling)
        self._wait_for_odd(series, study, calling, sop)
        return SUCCESS

    def _other_study(self, series: str, study: str) -> str:
        """Where the node holds `series` for another study than `study` (a sender that gave two
        series, most often of two patients, one UID): why an instance of it is refused; "" where not."""
        held = self.storage.state(series)
        if held is None or held.study_uid == study:
            return ""
        return (f"the node holds this series for study {held.study_uid} (from {held.calling_ae}, {held.state}), and "
                f"this instance is of study {study}: the sender gave two series one Series Instance UID. The held "
                "series is kept; the other is taken once the held one is pruned from the storage folder, or sent "
                "with a UID of its own")

    def _wait_for_odd(self, series: str, study: str, calling: str, sop: str) -> None:
        """After an instance of the series is stored: where an instance of it was skipped for its
        modality and is not stored since, the series waits for it (incomplete), never segmented
        without it; the skipped instance, sent again of the node's modality, ends the wait."""
        odd = self._passed_over.get(series)
        if odd is None:
            return
        if odd[0] == sop:
            with self._lock:
                self._passed_over.pop(series, None)
        elif not (self.storage.folder(series) / f"{odd[0]}.dcm").exists():
            self._cut_short(series, study, calling, odd[0], self._mixed(*odd), MIXED)

    def _mixed(self, sop: str, modality: str) -> str:
        return (f"instance {sop} is of modality {printable(modality or '(none)', 16)}, which this node does not "
                f"segment (--modality {','.join(sorted(self.modalities or ()))})")

    def _pass_over(self, series: str, study: str, calling: str, modality: str, sop: str) -> None:
        """An instance of a modality the node does not segment: acknowledged, not stored, its series
        said skipped once. A series of which instances are stored (one that mixes modalities) waits
        for it as incomplete (`_wait_for_odd` for those stored after it), never segmented without it."""
        with self._lock:
            first = series not in self._passed_over
            if first:
                self._passed_over[series] = (sop, modality)
            while len(self._passed_over) > MAX_PASSED_OVER:
                del self._passed_over[next(iter(self._passed_over))]
            try:
                stored = self._refused.get(series) or self.storage.state(series)
            except InputError:
                stored = None
        if first:
            log.info("study=%s series=%s step=skipped from=%s reason=modality %s is none this node segments "
                     "(--modality %s)", study, series, calling, printable(modality or "(none)", 16),
                     ",".join(sorted(self.modalities or ())))
        if stored is not None and stored.state in ("receiving", "incomplete"):
            self._cut_short(series, study, calling, sop, self._mixed(sop, modality), MIXED)

    def _cut_short(self, series: str, study: str, calling: str, sop: str, reason: str,
                   remedy: str = RESEND) -> None:
        """An instance of the series was refused: the series is incomplete until that instance is
        stored (each refused one, `missing`), so no SEG is made of the rest (`remedy`: what the
        sender can do). Kept in memory where its state cannot be written (a full disk), and written
        by the worker, or at the node's stop, once it can."""
        with self._lock:
            try:
                state = self._refused.get(series) or self.storage.state(series)
            except InputError:
                state = None
            state = state or SeriesState(series_uid=series, study_uid=study, calling_ae=calling)
            missing = state.missing.split() if state.state == "incomplete" else []
            told = sop in missing
            missing = (missing + [sop] if not told else missing)[-MAX_MISSING:]
            self._refused[series] = replace(state, state="incomplete", sending=0, missing=" ".join(missing),
                                            detail=f"{reason}; {remedy}")
            self._write_refused(series)
        if not told:
            log.warning("study=%s series=%s step=incomplete from=%s reason=%s; the series waits for it: %s", study,
                        series, calling, reason, remedy)

    def _write_refused(self, series: str) -> None:
        """Write the incomplete state of a series cut short (under the lock); kept for the next try
        where it cannot be written."""
        try:
            self.storage.save(self._refused[series])
        except (MedflowError, OSError):
            return
        del self._refused[series]

    def _still_incomplete(self, assoc: Any, state: SeriesState, calling: str) -> int:
        """An instance of a series cut short, stored (success), and the series stays incomplete: an
        instance refused before has not come again (`missing`), or this association was open when an
        abort cut the series short, and the instances lost then may never come in it; said once per
        association and series."""
        self.storage.save(replace(state, instances=len(self.storage.instances(state.series_uid)),
                                  last_received=now()), sync=False)
        self._refused.pop(state.series_uid, None)
        if self._first_word(assoc, state.series_uid):
            why = (f"it waits for the instance(s) refused before ({len(state.missing.split())})" if state.missing
                   else "this association was open when an abort cut the series short; it waits to be sent again "
                        "in a new association")
            log.warning("study=%s series=%s step=incomplete from=%s reason=%s", state.study_uid, state.series_uid,
                        calling, why)
        return SUCCESS

    def _first_word(self, assoc: Any, series: str) -> bool:
        """Whether the node has not yet said its word on `series` to `assoc` (then it is said now)."""
        told = self._told.setdefault(assoc, set())
        if series in told:
            return False
        told.add(series)
        return True

    def _on_established(self, event: Any) -> None:
        with self._lock:
            self._began[event.assoc] = next(self._order)

    def _on_rejected(self, event: Any) -> None:
        """An association the node refused, and why: a calling AE title not in --allow, a called one not
        this node's, or more associations at once than it takes."""
        requestor = event.assoc.requestor
        called = getattr(getattr(requestor, "primitive", None), "called_ae_title", None) or "?"
        answer = getattr(getattr(event.assoc, "acceptor", None), "primitive", None)
        source, diagnostic = getattr(answer, "result_source", None), getattr(answer, "diagnostic", None)
        reason = {(1, 3): "the calling AE title is not in --allow",
                  (1, 7): f"the called AE title is not this node's {self.ae_title}",
                  (3, 2): "more associations at once than the node takes; the sender may try again"}.get(
            (source, diagnostic), f"refused (source {source}, diagnostic {diagnostic})")
        log.warning("step=rejected from=%s called=%s address=%s reason=%s", str(requestor.ae_title).strip(),
                    str(called).strip(), requestor.address, reason)

    def _resent(self, assoc: Any, state: SeriesState, calling: str) -> int:
        """An instance sent again, unchanged, into a series taken whole: stored already, so success,
        and nothing else; said once per association and series."""
        if self._first_word(assoc, state.series_uid):
            log.info("study=%s series=%s step=resent from=%s reason=instances stored already change nothing "
                     "(the series is %s; new instances would make it again)", state.study_uid, state.series_uid,
                     calling, state.state)
        return SUCCESS

    def _on_acse(self, event: Any) -> None:
        """A release asked for: its series are recorded as sent whole, durably, before the node
        answers it (pynetdicom answers once this returns), so a node killed after the sender saw
        its release still takes them as complete at its next start."""
        from pynetdicom.pdu_primitives import A_RELEASE

        if isinstance(event.primitive, A_RELEASE) and event.primitive.result is None:
            self._on_released(event)

    def _on_released(self, event: Any) -> None:
        """The association ended normally: its series may be processed once idle."""
        with self._lock:
            ended = self._end(event.assoc)
            for series in ended - self._open_series() - set(self._refused):    # one cut short stays so on disk
                try:
                    state = self.storage.state(series)
                    if state is not None and state.sending:
                        self.storage.update(series, sending=0)
                except (MedflowError, OSError) as error:       # its next start takes the series as cut short
                    log.error("series=%s step=store-failed reason=%s", series, error)

    def _on_cut_off(self, event: Any) -> None:
        """The association was aborted (by either side, or as its connection dropped: an A-P-ABORT):
        a series it was sending is incomplete, and waits to be sent again (`runtime listen --status`
        says so). A connection closing after a release is no abort (pynetdicom may say it closed
        before it says it released)."""
        if _idle_timed_out(event.assoc):                      # the node closed an idle association: no cut
            with self._lock:
                series = sorted(self._open.get(event.assoc, set()))
            log.info("step=idle-closed from=%s series=%s reason=no message for %.0f s; what it sent is taken as "
                     "sent whole", str(event.assoc.requestor.ae_title).strip(), ",".join(series) or "-",
                     self.association_idle_s)
            self._on_released(event)
            return
        with self._lock:
            for series in self._end(event.assoc):
                state = self.storage.state(series)
                if state is None or state.state != "receiving":
                    continue
                self.storage.update(series, state="incomplete", sending=0,
                                    detail=f"the association sending it was aborted after {state.instances} "
                                           "instance(s); send the series again")
                self._aborted[series] = next(self._order)
                log.warning("study=%s series=%s step=incomplete instances=%d reason=the association sending it was "
                            "aborted; the series waits to be sent again", state.study_uid, series, state.instances)

    def _end(self, assoc: Any) -> set[str]:
        """Forget an association that ended (under the lock): the series it stored into."""
        self._told.pop(assoc, None)
        self._began.pop(assoc, None)
        return self._open.pop(assoc, set())

    def _open_series(self) -> set[str]:
        """The series an open association is sending (under the lock)."""
        return {uid for series in self._open.values() for uid in series}

    def _sending(self) -> set[str]:
        with self._lock:
            return self._open_series()

    # ------------------------------------------------------------------ the worker

    def _loop(self, look: Callable[[], None], step: str) -> None:
        """`look` ten times a second until the node stops; an error is one `step=<step>` line and a
        back-off (0.2 s, 0.4 s, ... up to a minute)."""
        failures = 0
        while not self._stop.is_set():
            try:
                look()
                failures = 0
            except Exception as error:  # noqa: BLE001 - the node keeps running; the series stays for the next look
                failures += 1
                wait = min(MAX_BACKOFF_S, POLL_S * 2.0 ** failures)
                known = isinstance(error, (MedflowError, OSError))
                log.error("step=%s failures=%d retry_in=%.1fs reason=%s", step, failures, wait,
                          error if known else f"{type(error).__name__}: {error}", exc_info=not known and failures == 1)
                self._stop.wait(wait)
                continue
            self._stop.wait(POLL_S)

    def step(self) -> None:
        """One look at every stored series: process the complete ones (the delivery thread sends
        their SEGs)."""
        with self._lock:
            for series in list(self._refused):
                self._write_refused(series)
            refused = set(self._refused)
        sending = self._sending()
        for state in self.storage.all():
            if self._stop.is_set():
                return
            if state.series_uid in refused:
                continue
            if state.state == "processing" or (state.state == "receiving" and state.series_uid not in sending
                                                and now() - state.last_received >= self.idle_s
                                                and now() >= state.next_attempt):
                self._process(state)

    def _process(self, state: SeriesState) -> None:
        with self._lock:                        # the look at the series may be seconds old: look again
            current = self.storage.state(state.series_uid)
            if (current is None or current.instances != state.instances or state.series_uid in self._refused
                    or current.state not in ("receiving", "processing")
                    or (current.state == "receiving" and state.series_uid in self._open_series())):
                return
            self.storage.update(state.series_uid, state="processing")
        started = time.perf_counter()
        revision = state.revision + 1
        log.info("study=%s series=%s step=processing instances=%d%s", state.study_uid, state.series_uid,
                 state.instances, "" if revision == 1 else f" revision={revision} (a result of fewer instances "
                 "was made before; this one replaces it)")
        try:
            seg_name, found = self._segment(state, revision)
        except ServerUnavailable as error:              # the server down or restarting: the series waits
            self._retry_later(state, str(error), "server-unavailable")
            return
        except (OutputError, OSError) as error:       # the node's own folder: the series waits, then is made again
            self._retry_later(state, f"{error}" if isinstance(error, OutputError) else
                              f"{type(error).__name__}: {error}")
            return
        except Exception as error:  # noqa: BLE001 - one bad series is marked failed, never retried in a loop
            reason = str(error) if isinstance(error, MedflowError) else f"{type(error).__name__}: {error}"
            with self._lock:
                current = self.storage.state(state.series_uid)
                if current is None or current.state != "processing":          # more instances came meanwhile
                    return
                self.storage.update(state.series_uid, state="failed", detail=reason[:500])
            log.error("study=%s series=%s step=failed reason=%s", state.study_uid, state.series_uid, reason)
            return
        with self._lock:
            current = self.storage.state(state.series_uid)
            if current is None or current.state != "processing":       # more instances came meanwhile
                return
            self.storage.update(state.series_uid, state="processed", seg=seg_name, attempts=0, next_attempt=0.0,
                                revision=revision)
        log.info("study=%s series=%s step=processed seconds=%.2f found=%s", state.study_uid, state.series_uid,
                 time.perf_counter() - started, found)

    def _retry_later(self, state: SeriesState, reason: str, step: str = "write-failed") -> None:
        """Its SEG could not be written in the storage folder (full, or not writable), or the server
        that runs the model could not (`step`): the series is received still, and is made again
        after a back-off (1 s, 2 s, ... up to a minute)."""
        with self._lock:
            current = self.storage.state(state.series_uid)
            if current is None or current.state != "processing":
                return
            attempts = current.attempts + 1
            wait = min(MAX_BACKOFF_S, 2.0 ** (attempts - 1))
            try:
                self.storage.update(state.series_uid, state="receiving", attempts=attempts,
                                    next_attempt=now() + wait, detail=reason[:500])
            except (MedflowError, OSError) as error:     # the disk that took no result takes no state either
                log.error("study=%s series=%s step=%s attempts=%d reason=%s; its state could not be saved either, "
                          "so the node waits before it looks at the series again", state.study_uid,
                          state.series_uid, step, attempts, reason)
                raise OutputError(f"series {state.series_uid}: {error}") from None
        log.error("study=%s series=%s step=%s attempts=%d retry_in=%.0fs reason=%s", state.study_uid,
                  state.series_uid, step, attempts, wait, reason)

    def _segment(self, state: SeriesState, revision: int) -> tuple[str, str]:
        """Run the model on the stored series and keep its result in the storage folder: a DICOM SEG
        for a segmentation model, a DICOM SR of its findings for a classification or regression one."""
        from runtime.io import read_scan
        from runtime.io.dicom_seg import build_seg, referenced_instances
        from runtime.io.dicom_sr import earlier_report, findings_of, write_sr
        folder = self.storage.folder(state.series_uid)
        scan = read_scan([folder])
        manifest = self.model.manifest
        segmentation = manifest.task == "segmentation"
        sources = referenced_instances(list(scan.series_files), scan.reference, segmentation)
        prediction = self._predicted(scan)
        name = f"{state.series_uid}.dcm"
        target = self.storage.results / name
        tmp = self.storage.results / f".{name}.writing"
        report = self._report_of(name) if segmentation else target
        previous = earlier_report(report, sources[0]) if revision > 1 else None    # the report a revision replaces
        seg = None
        staged = self.storage.results / f".{name}.report.writing"
        try:
            if segmentation:
                seg = build_seg(prediction.labels_zyx, sources, manifest, revision=revision, uid_root=self.uid_root)
                seg.save_as(tmp)
                report.unlink(missing_ok=True)             # an earlier revision's, which this SEG replaces
            if not segmentation or self.report:
                found = findings_of(prediction, manifest, scan.reference.GetSpacing(), seg)
                write_sr(tmp if seg is None else staged, sources, manifest, found, revision=revision,
                         previous=previous, uid_root=self.uid_root)
                if seg is not None:
                    write_durably(report, staged.read_bytes())
            write_durably(target, tmp.read_bytes())
        except OSError as error:          # pydicom's message of a failed write carries a traceback: one line
            raise OutputError(f"cannot write the result in {self.storage.results} ({_os_reason(error)}); free space "
                              "there or make it writable: the series is made again after a back-off") from None
        finally:
            for partial in (tmp, staged):
                with contextlib.suppress(OSError):
                    partial.unlink(missing_ok=True)
        return name, found_text(prediction, manifest, scan.reference.GetSpacing())

    def _predicted(self, scan: Scan) -> Prediction:
        """The model's answer for the series' scan: a segmentation's labels (no probabilities: a SEG
        and its volumes take the labels), or a classifier's or regression model's scores."""
        from runtime.predict import predict_scan

        if isinstance(self.model, Model):
            return predict_scan(self.model, scan, probabilities=False, overwrite=True)
        return self.model.predict(scan)

    def _report_of(self, name: str) -> Path:
        """Where the SR of the volumes of the SEG `name` is kept in the storage folder."""
        return self.storage.results / f"{name[:-len('.dcm')]}.sr.dcm"

    # ------------------------------------------------------------------ delivering

    def deliver_due(self) -> None:
        """One look at every stored series: send the SEGs due (processed, past their back-off)."""
        with self._lock:
            refused = set(self._refused)
        for state in self.storage.all():
            if self._stop.is_set():
                return
            if state.state == "processed" and state.series_uid not in refused and now() >= state.next_attempt:
                self._deliver(state)

    def _deliver(self, state: SeriesState) -> None:
        with self._lock:
            current = self.storage.state(state.series_uid)
            if current is None or current.state != "processed" or current.seg != f"{state.series_uid}.dcm":
                return                                  # new instances came: the series is processed again
        paths = [self.storage.results / current.seg]
        if self.report and self.model.manifest.task == "segmentation":
            if self._report_of(current.seg).is_file():
                paths.append(self._report_of(current.seg))
            elif current.attempts == 0:                  # said once, not at every retry
                log.warning("study=%s series=%s step=no-report reason=the series was segmented without --report; its "
                            "SEG goes alone", state.study_uid, state.series_uid)
        try:
            problem = self._send(paths)
        except Exception as error:  # noqa: BLE001 - a failed delivery is retried with back-off, never a crash
            problem = f"{type(error).__name__}: {error}"
        if problem and self._stop.is_set():
            log.info("study=%s series=%s step=delivery-interrupted reason=the node is stopping; the result is sent "
                     "at its next start", state.study_uid, state.series_uid)
            return
        with self._lock:
            latest = self.storage.state(state.series_uid)
            if latest is None or latest.state != "processed" or (latest.instances, latest.revision) != (
                    current.instances, current.revision):
                return                                  # changed while sending: it is processed and sent again
            attempts = latest.attempts + 1
            if not problem:
                self.storage.update(state.series_uid, state="delivered", attempts=attempts, detail="")
            else:
                wait = min(MAX_BACKOFF_S, 2.0 ** (attempts - 1))
                self.storage.update(state.series_uid, attempts=attempts, next_attempt=now() + wait, detail=problem)
        if not problem:
            log.info("study=%s series=%s step=delivered to=%s attempts=%d", state.study_uid, state.series_uid,
                     self.destination.ae_title, attempts)
        else:
            log.warning("study=%s series=%s step=delivery-failed to=%s attempts=%d retry_in=%.0fs reason=%s",
                        state.study_uid, state.series_uid, self.destination.ae_title, attempts, wait, problem)

    def _send(self, paths: list[Path]) -> str:
        """C-STORE the results (a SEG, an SR, or both) at `paths` to the destination over one
        association: "" once each is stored, else what went wrong, in words an integrator can act
        on. The association is always released (aborted on an error)."""
        from pydicom import dcmread
        from pynetdicom import AE, evt

        from runtime.io.dicom_seg import SEGMENTATION_STORAGE

        datasets = [dcmread(path) for path in paths]
        ae = AE(ae_title=self.ae_title)
        ae.connection_timeout = ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT_S
        for dataset in datasets:
            ae.add_requested_context(dataset.SOPClassUID, dataset.file_meta.TransferSyntaxUID)
        answers: list[Any] = []
        where = f"{self.destination.ae_title}@{self.destination.host}:{self.destination.port}"
        try:
            try:
                assoc = ae.associate(self.destination.host, self.destination.port, ae_title=self.destination.ae_title,
                                     evt_handlers=[(evt.EVT_CONN_OPEN, self._on_outgoing),
                                                   (evt.EVT_ACSE_RECV, lambda event: answers.append(event.primitive))])
            except socket.gaierror as error:
                return f"the destination's host {self.destination.host!r} is not known ({error.strerror or error})"
            accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
            refused = [dataset for dataset in datasets if str(dataset.SOPClassUID) not in accepted]
            took = any(getattr(answer, "result", None) == 0 for answer in answers)     # an A-ASSOCIATE-AC
            if refused and (assoc.is_established or took):
                if assoc.is_established:
                    assoc.release()
                report = str(refused[0].SOPClassUID) != SEGMENTATION_STORAGE and len(datasets) > 1
                return (f"{where} accepted the association but not {_sop_name(refused[0].SOPClassUID)} objects; "
                        "have it store them" + (" (or leave --report out)" if report else ""))
            if not assoc.is_established:
                return _not_associated(answers, self._outgoing is not None, where)
            try:
                codes = [_status(assoc.send_c_store(dataset)) for dataset in datasets]
            except BaseException:
                assoc.abort()
                raise
            aborted = assoc.acse.is_aborted("a-abort")                       # the destination's A-ABORT
            dropped = not aborted and (assoc.is_aborted or assoc.acse.is_aborted("a-p-abort"))  # the connection lost
            if assoc.is_established and not (aborted or dropped):
                assoc.release()
        finally:
            with self._lock:
                self._outgoing = None
        code = next((code for code in codes if not _succeeded(code)), codes[-1])
        if code < 0 and aborted:
            return (f"{where} aborted the association before it answered the C-STORE; its log says why (a full "
                    "disk, an object it does not take)")
        if code < 0 and dropped:
            return (f"the connection to {where} ended before it answered the C-STORE (it stopped, or restarted, or "
                    "the network dropped)")
        if code < 0:
            return f"{where} gave no answer to a C-STORE within {NETWORK_TIMEOUT_S:g} s"
        return "" if _succeeded(code) else f"{where} answered the C-STORE with status 0x{code:04X}{_meaning(code)}"

    def _on_outgoing(self, event: Any) -> None:
        """The connection to the destination is open: kept, so that a stopping node can cut it."""
        with self._lock:
            self._outgoing = event.assoc
        if self._stop.is_set():
            self._cut_outgoing()

    def _cut_outgoing(self) -> None:
        """End the connection a SEG is being sent over, at once: the sender's wait for an answer
        (up to NETWORK_TIMEOUT_S) ends as the connection drops."""
        with self._lock:
            assoc = self._outgoing
        connection = getattr(getattr(getattr(assoc, "dul", None), "socket", None), "socket", None)
        if connection is None:
            return
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# SOP classes whose instances are no slices of a volume: Segmentation (a SEG routed back to the node),
# and the Secondary Capture family (screenshots, scanned documents; no geometry).
_NOT_VOLUMES = {"1.2.840.10008.5.1.4.1.1.66.4": "a segmentation",
                **{f"1.2.840.10008.5.1.4.1.1.7{part}": "a secondary capture" for part in ("", ".1", ".2", ".3", ".4")}}


def _not_associated(answers: list[Any], connected: bool, where: str) -> str:
    """Why no association with the destination was made: it rejected it (its reason) or aborted it,
    it took the connection but never answered, or no connection could be made."""
    rejected = next((answer for answer in answers if getattr(answer, "result", None) in (1, 2)), None)
    if rejected is not None:
        return (f"{where} rejected the association ({printable(rejected.reason_str)}); check --send-to's AE title and "
                "that the destination knows this node's (--ae-title)")
    if any(type(answer).__name__ in ("A_ABORT", "A_P_ABORT") for answer in answers):
        return f"{where} aborted the association request"
    if connected:
        return f"{where} took the connection but did not answer the association request within {NETWORK_TIMEOUT_S:g} s"
    return f"cannot connect to {where} (refused, or the host is down or unreachable)"


def _sop_name(uid: Any) -> str:
    """A SOP class by its name where pydicom knows it, else its UID."""
    from pydicom.uid import UID

    name = UID(str(uid)).name
    return name if name and name != str(uid) else str(uid)


def _meaning(code: int) -> str:
    """What a C-STORE failure status means, and what to do, where DICOM (PS3.4 B.2.3) says."""
    if 0xA700 <= code <= 0xA7FF:
        return " (out of resources: its disk is full or it is overloaded; it is sent again after a back-off)"
    if 0xA900 <= code <= 0xA9FF:
        return " (the data set does not match the SOP class, by its checks)"
    if 0xC000 <= code <= 0xCFFF:
        return " (cannot understand: it could not read the object)"
    return {0x0110: " (processing failure)", 0x0122: " (SOP class not supported: have it store them)",
            0x0124: " (not authorized: have it accept this node's AE title)"}.get(code, "")


def _os_reason(error: OSError) -> str:
    """What a failed write says, in one line: its errno's words where they are in its message (which
    pydicom may have wrapped with the traceback of the element it was writing)."""
    if error.strerror:
        return error.strerror
    found = re.search(r"\[Errno \d+\] [^\n]*", str(error))
    return found.group(0) if found else (str(error).splitlines() or [type(error).__name__])[0]


def _status(answer: Any) -> int:
    """A C-STORE answer's status; -1 where it has none (no answer came)."""
    code = getattr(answer, "Status", None)
    return int(code) if code is not None else -1


def _succeeded(code: int) -> bool:
    """Whether a C-STORE status is success, or a warning (0xB000-0xB0FF) under which the object was stored."""
    return code == SUCCESS or 0xB000 <= code <= 0xB0FF


def printable(value: Any, limit: int = 80) -> str:
    """A value a sender chose, fit for one log line: as it is where printable and short, else its
    repr, cut (a newline in it would forge a line of its own)."""
    text = str(value)
    return text if text.isprintable() and len(text) <= limit else repr(text[:limit])


def _image_class(dataset: Any) -> str | None:
    """The name of the instance's SOP class where it is an image storage class (CT Image Storage,
    Digital X-Ray Image Storage - For Presentation, Enhanced US Volume Storage), whose instances
    must carry pixel data; None for another class (a report, a presentation state)."""
    from pydicom.uid import UID

    name = UID(str(dataset.get("SOPClassUID", "") or "")).name
    return name if "Image Storage" in name or "Volume Storage" in name else None


def _not_segmented(dataset: Any) -> str | None:
    """Why an instance is stored in no series to segment: no pixel data and no image storage class
    (a report, a presentation state), a SEG or secondary capture, or a localizer (a CT scout: one
    projection, no volume); None for a slice of a volume (or an image that lost its pixel data on
    its way, which `_pixel_problem` refuses)."""
    if "PixelData" not in dataset and _image_class(dataset) is None:
        return "not an image"
    kind = _NOT_VOLUMES.get(str(dataset.get("SOPClassUID", "")))
    if kind:
        return f"{kind}, not a slice of a volume"
    image_type = dataset.get("ImageType") or []
    values = [str(v).upper() for v in ([image_type] if isinstance(image_type, str) else image_type)]
    return "a localizer (a scout projection), not a slice of a volume" if "LOCALIZER" in values else None


def _pixel_problem(dataset: Any) -> str | None:
    """What is missing from an instance's pixel data: all of it (an image storage class's instance
    without it), or, uncompressed, bytes (fewer than its rows, columns, samples, bits and frames
    promise: a file cut short on its way); None where it holds them, or where it is compressed (its
    decoder checks its own stream)."""
    from runtime.io.dicom import NATIVE_SYNTAXES, pixel_shortfall

    if "PixelData" not in dataset:
        return (f"holds no pixel data, which an instance of {_image_class(dataset)} must: it was damaged on its way "
                "(a Pixel Data element whose tag or length was overwritten)")
    syntax = str(getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax not in NATIVE_SYNTAXES:
        return None
    try:
        numbers = [int(dataset.get(name) if dataset.get(name) not in (None, "") else default) for name, default in
                   (("Rows", -1), ("Columns", -1), ("BitsAllocated", -1), ("SamplesPerPixel", 1),
                    ("NumberOfFrames", 1))]
        present = len(dataset.PixelData or b"")
    except (TypeError, ValueError):
        return "has a Rows, Columns, Bits Allocated, Samples per Pixel or Number of Frames that is not a number"
    if min(numbers) < 0:
        return "lacks Rows, Columns or Bits Allocated"
    return pixel_shortfall(present, *numbers)


def _idle_timed_out(assoc: Any) -> bool:
    """Whether an association ended because it stayed idle past the node's network timeout."""
    dul = getattr(assoc, "dul", None)
    try:
        return bool(dul is not None and dul.idle_timer_expired())
    except Exception:  # noqa: BLE001 - a DUL without a timer: no timeout
        return False


def found_text(prediction: Prediction, manifest: Manifest, spacing_xyz: Sequence[float]) -> str:
    """What the model found, for the log: each class's volume (`none` where the SEG holds no
    segment's voxel, so that an empty result is told from a broken node), or the predicted class
    and its probability, or each target's value."""
    from runtime.io.dicom_sr import class_volumes
    from runtime.postprocess import scored_values

    if manifest.task == "segmentation":
        volumes = [(name_of(manifest, value), ml) for value, ml in class_volumes(prediction.labels_zyx, spacing_xyz,
                                                                                 manifest) if ml > 0]
        return ",".join(f"{name}:{ml:.4g}mL" for name, ml in volumes) or "none"
    scored = scored_values(prediction.scores, manifest)
    if manifest.task == "classification":
        chosen = next((p for spec, p in scored if spec.value == prediction.label), None)
        return name_of(manifest, prediction.label) + ("" if chosen is None else f"(p={chosen:.3g})")
    return ",".join(f"{spec.name}:{value:.6g}" for spec, value in scored)


def name_of(manifest: Manifest, value: int | None) -> str:
    return next((spec.name for spec in manifest.classes if spec.value == value), str(value))


def status_lines(storage: Storage) -> list[str]:
    """What the storage folder holds, one line per series: study, series, instances, state, the
    attempts of its step (SeriesState.attempts) and the last problem."""
    rows = [["study", "series", "instances", "state", "attempts", "detail"]]
    for state in storage.all():
        rows.append([state.study_uid, state.series_uid, str(state.instances), state.state, str(state.attempts),
                     _short_detail(state)])
    if len(rows) == 1:
        return [f"{storage.root}: no series received"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


# Characters of a series' last problem that --status shows.
DETAIL_CHARS = 240


def _short_detail(state: SeriesState) -> str:
    """The last problem, with the series' own folder (a path ending in its UID, which the line
    shows already) left out or said as "the series" (a file in it by its name), cut to
    DETAIL_CHARS."""
    folder = rf"\S*/series/{re.escape(state.series_uid)}"          # its folder in the storage folder
    detail = re.sub(rf"{folder}/", "", " ".join(state.detail.split()))             # a file in it: its name
    detail = re.sub(rf" in {folder}(?=[\s;,.:]|$)", "", detail)
    detail = re.sub(rf"{folder}(?=[\s;,.:]|$)", "the series", detail)
    return detail if len(detail) <= DETAIL_CHARS else detail[:DETAIL_CHARS - 1] + "…"


def storage_for(path: Path) -> Storage:
    return Storage(path)
