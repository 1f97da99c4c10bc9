"""The listener's storage folder: instances stored once and never written over, nor in two series,
UIDs that cannot leave the folder, a damaged state file that stops only its own series, and a start
that marks incomplete what an association was sending when the node died."""
from __future__ import annotations

import os

import pytest

from runtime.errors import InputError
from runtime.pacs.storage import Conflict, SeriesState, Storage


def test_an_instance_is_stored_once_and_other_contents_under_its_uid_are_refused(tmp_path):
    storage = Storage(tmp_path / "store")
    assert storage.store("1.2.3", "1.2.3.4", b"first") is True
    assert storage.store("1.2.3", "1.2.3.4", b"first") is False                 # the same instance again
    with pytest.raises(Conflict, match="stored already with other contents"):
        storage.store("1.2.3", "1.2.3.4", b"changed")
    assert (tmp_path / "store" / "series" / "1.2.3" / "1.2.3.4.dcm").read_bytes() == b"first"
    for uid in ("../../etc", "1.2/3", "", "1." * 40 + "1"):
        with pytest.raises(InputError, match="is not a DICOM UID"):
            storage.store(uid, "1.2", b"x")
        with pytest.raises(InputError, match="is not a DICOM UID"):
            storage.store("1.2", uid, b"x")


def test_an_instance_stored_in_one_series_is_refused_in_another_until_its_series_is_pruned(tmp_path):
    import shutil

    storage = Storage(tmp_path / "store")
    assert storage.store("1.2.3", "1.2.3.4", b"first") is True
    with pytest.raises(Conflict, match="instance 1.2.3.4 is stored already in series 1.2.3"):
        storage.store("1.2.9", "1.2.3.4", b"first")
    assert not (tmp_path / "store" / "series" / "1.2.9" / "1.2.3.4.dcm").exists()
    shutil.rmtree(tmp_path / "store" / "instances")                     # a folder from before the index
    with pytest.raises(Conflict, match="stored already in series 1.2.3"):
        Storage(tmp_path / "store").store("1.2.9", "1.2.3.4", b"first")
    (tmp_path / "store" / "instances" / "1.2.3.4").unlink()                  # an indexing cut short:
    (tmp_path / "store" / "instances" / ".indexed").unlink()                 # made whole at the next start
    with pytest.raises(Conflict, match="stored already in series 1.2.3"):
        Storage(tmp_path / "store").store("1.2.9", "1.2.3.4", b"first")
    shutil.rmtree(tmp_path / "store" / "series" / "1.2.3")               # pruned once delivered
    assert Storage(tmp_path / "store").store("1.2.9", "1.2.3.4", b"first") is True


def test_a_damaged_state_file_is_skipped_logged_once_and_the_other_series_are_listed(tmp_path, caplog):
    storage = Storage(tmp_path / "store")
    storage.save(SeriesState(series_uid="1.2.3", study_uid="1.2", calling_ae="CT", instances=3))
    storage.save(SeriesState(series_uid="1.2.4", study_uid="1.2", calling_ae="CT", instances=2))
    (tmp_path / "store" / "series" / "1.2.4" / ".state.json").write_text('{"series_uid": "1.2.4", "seg": 5}')
    with caplog.at_level("ERROR", logger="runtime.listen"):
        for _ in range(20):                         # the worker and the delivery look ten times a second
            assert [state.series_uid for state in storage.all()] == ["1.2.3"]
        storage.recover()
    assert [record.getMessage().split(" reason=")[0] for record in caplog.records] == [
        "series=1.2.4 step=skipped"]
    (tmp_path / "store" / "series" / "1.2.4" / ".state.json").write_text('{"state": "deliv')
    with caplog.at_level("ERROR", logger="runtime.listen"):
        storage.all()
        storage.all()
    assert len(caplog.records) == 2 and "not JSON" in caplog.records[1].getMessage()   # another reason: said again
    storage.save(SeriesState(series_uid="1.2.5", study_uid="1.2", calling_ae="CT", seg="../../elsewhere.dcm"))
    assert [state.series_uid for state in storage.all()] == ["1.2.3"]             # a SEG name outside results/


def test_a_state_file_from_before_revisions_counts_its_seg_as_the_first(tmp_path):
    import json

    storage = Storage(tmp_path / "store")
    earlier = {"series_uid": "1.2.3", "study_uid": "1.2", "calling_ae": "CT", "state": "delivered", "instances": 3,
               "last_received": 1.0, "seg": "1.2.3.dcm", "attempts": 1, "next_attempt": 0.0, "detail": ""}
    folder = tmp_path / "store" / "series" / "1.2.3"
    folder.mkdir(parents=True)
    (folder / ".state.json").write_text(json.dumps(earlier))
    assert storage.state("1.2.3").revision == 1                  # a grown series is then made as revision 2
    (folder / ".state.json").write_text(json.dumps({**earlier, "state": "receiving", "seg": ""}))
    assert storage.state("1.2.3").revision == 0


def test_a_start_marks_incomplete_what_an_association_was_sending_when_the_node_died(tmp_path):
    storage = Storage(tmp_path / "store")

    def series(uid: str, stored: int, **state) -> None:
        for number in range(stored):
            storage.store(uid, f"{uid}.{number}", b"instance")
        if state:
            storage.save(SeriesState(series_uid=uid, study_uid="1.2", calling_ae="CT", **state))

    series("1.2.1", 2, instances=2, sending=0)             # its association released: complete
    series("1.2.2", 2, instances=2, sending=1)             # its association never ended
    series("1.2.3", 3, instances=2, sending=0)             # an instance stored after the last state written
    series("1.2.4", 1)                                     # no state written at all
    series("1.2.5", 2, instances=2, sending=1, state="processed", seg="1.2.5.dcm")
    series("1.2.6", 3, instances=2, state="delivered", seg="1.2.6.dcm", revision=1)   # grew, its state lost
    series("1.2.7", 1, instances=1)
    (tmp_path / "store" / "series" / "1.2.7" / ".state.json").write_text("{")     # damaged: left, logged
    cut = storage.recover()
    assert [(state.series_uid, state.instances) for state in cut] == [("1.2.2", 2), ("1.2.3", 3), ("1.2.4", 1),
                                                                       ("1.2.6", 3)]
    states = {state.series_uid: state for state in storage.all()}
    assert {uid: state.state for uid, state in states.items()} == {
        "1.2.1": "receiving", "1.2.2": "incomplete", "1.2.3": "incomplete", "1.2.4": "incomplete",
        "1.2.5": "processed", "1.2.6": "incomplete"}
    assert states["1.2.6"].revision == 1                    # sent again, its SEG is made as revision 2
    assert "the node stopped while an association was sending it (3 instance(s) stored); send the series again" \
        == states["1.2.3"].detail and states["1.2.2"].calling_ae == "CT"
    assert storage.recover() == []                         # a second start finds nothing more to mark


def test_an_instance_sent_again_in_another_encoding_is_the_same_and_one_with_other_values_or_pixels_is_refused(
        data_dir, tmp_path):
    import io

    import pydicom
    from pydicom.filewriter import dcmwrite
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

    original = sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())[0]

    def encoded(change=None, syntax: str = ExplicitVRLittleEndian) -> bytes:
        dataset = pydicom.dcmread(original)
        for tag in [element.tag for element in dataset if element.tag.element == 0]:
            del dataset[tag]                                           # no group lengths, as many senders write
        if change is not None:
            change(dataset)
        if syntax in (RLELossless, JPEGLSLossless):
            dataset.compress(syntax, generate_instance_uid=False)
        else:
            dataset.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    def pixel(dataset) -> None:
        pixels = dataset.pixel_array.copy()
        pixels[10, 10] += 1
        dataset.PixelData = pixels.tobytes()

    storage = Storage(tmp_path / "store")
    series, sop = "1.2.3", "1.2.3.4"
    assert storage.store(series, sop, original.read_bytes()) is True               # implicit VR, group lengths
    assert storage.store(series, sop, encoded()) is False                            # explicit VR, none
    assert storage.store(series, sop, encoded(syntax=RLELossless)) is False          # compressed, losslessly
    assert storage.store(series, sop, encoded(syntax=JPEGLSLossless)) is False
    assert storage.store(series, sop, encoded(lambda d: d.add_new(0x00090010, "LO", "ELSEWHERE"))) is False
    for change in (lambda d: setattr(d, "PatientName", "Other^Patient"), pixel):
        with pytest.raises(Conflict, match="stored already with other contents"):
            storage.store(series, sop, encoded(change))
    with pytest.raises(Conflict):
        storage.store(series, sop, encoded(pixel, syntax=RLELossless))
    big_endian = pydicom.dcmread(original)
    stored_pixels = big_endian.PixelData
    big_endian.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = io.BytesIO()
    dcmwrite(buffer, big_endian, little_endian=False, implicit_vr=False)            # the same bytes: other values
    with pytest.raises(Conflict):
        storage.store(series, sop, buffer.getvalue())
    pixels = pydicom.dcmread(original).pixel_array
    big_endian.PixelData = pixels.astype(pixels.dtype.newbyteorder(">")).tobytes()   # the same values
    buffer = io.BytesIO()
    dcmwrite(buffer, big_endian, little_endian=False, implicit_vr=False)
    assert storage.store(series, sop, buffer.getvalue()) is False and big_endian.PixelData != stored_pixels
    with pytest.raises(Conflict):
        storage.store(series, sop, original.read_bytes()[:-1000])                     # cut short
    assert (tmp_path / "store" / "series" / series / f"{sop}.dcm").read_bytes() == original.read_bytes()


def test_private_and_ambiguous_attributes_in_sequences_compare_by_value_whatever_the_encoding(data_dir):
    import io

    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from runtime.pacs.storage import same_instance

    def encoded(syntax: str, private: str = "ONE") -> bytes:
        dataset = pydicom.dcmread(sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())[0])
        item = Dataset()
        item.LUTDescriptor = [4, 0, 16]                     # US or SS: read back as either
        item.add_new(0x00283006, "US", [0, 1, 2, 3])       # LUT Data: US or OW
        item.ModalityLUTType = "HU"
        block = item.private_block(0x0011, "ACME", create=True)
        block.add_new(0x01, "LO", private)
        dataset.ModalityLUTSequence = [item]
        dataset.file_meta.TransferSyntaxUID = syntax
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    implicit = encoded(ImplicitVRLittleEndian)
    assert same_instance(implicit, encoded(ExplicitVRLittleEndian))
    assert same_instance(implicit, encoded(ExplicitVRLittleEndian, private="TWO"))    # private: not compared


def test_compressed_frames_that_claim_another_size_than_the_instance_are_not_decoded(data_dir):
    import io
    import struct

    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

    from runtime.pacs.storage import _frame_size, same_instance

    original = sorted((data_dir / "dicom" / "dcmqi_ct3").iterdir())[0]
    dataset = pydicom.dcmread(original)
    dataset.compress(JPEGLSLossless, generate_instance_uid=False)
    frame = next(generate_frames(dataset.PixelData, number_of_frames=1))
    assert _frame_size(frame) == (512, 512)
    at = frame.index(b"\xff\xf7")                                    # JPEG-LS's frame header: rows, columns
    dataset.PixelData = encapsulate([frame[:at + 5] + struct.pack(">HH", 20000, 20000) + frame[at + 9:]])
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    assert not same_instance(original.read_bytes(), buffer.getvalue())
    siz = b"\xff\x4f\xff\x51\x00\x29\x00\x00" + struct.pack(">IIII", 612, 530, 100, 18)   # SOC, SIZ
    assert _frame_size(siz + bytes(40)) == (512, 512) and _frame_size(b"\xff\xd8\xff\xd9") is None
    assert JPEG2000Lossless.is_compressed


def test_a_second_listener_on_one_storage_folder_is_refused_until_the_first_lets_go(tmp_path):
    first, second = Storage(tmp_path / "store"), Storage(tmp_path / "store")
    first.hold()
    with pytest.raises(InputError, match=rf"in use by another runtime listen \(process {os.getpid()}\)"):
        second.hold()
    first.let_go()
    second.hold()
    second.let_go()


def test_values_a_sender_chose_cannot_forge_a_log_line():
    from runtime.errors import InputError
    from runtime.pacs.listener import printable
    from runtime.pacs.storage import check_uid

    forged = "1.2\n2026-12-06 17:30:00,000 INFO study=1.2 series=1.2 step=delivered to=PACS attempts=1"
    assert "\n" not in printable(forged) and printable(forged).startswith("'1.2\\n2026")
    assert printable("1.2.840.10008.5.1.4.1.1.88.11") == "1.2.840.10008.5.1.4.1.1.88.11"
    assert len(printable("9" * 10_000)) < 90
    with pytest.raises(InputError) as caught:
        check_uid("1.2\n" + "x" * 10_000, "Series Instance UID")
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 250
