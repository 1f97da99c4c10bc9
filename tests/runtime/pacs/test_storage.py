"""The listener's storage folder: instances stored once and never written over, UIDs that cannot
leave the folder, and a damaged state file that stops only its own series."""
from __future__ import annotations

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


def test_a_damaged_state_file_is_skipped_and_the_other_series_are_listed(tmp_path):
    storage = Storage(tmp_path / "store")
    storage.save(SeriesState(series_uid="1.2.3", study_uid="1.2", calling_ae="CT", instances=3))
    storage.save(SeriesState(series_uid="1.2.4", study_uid="1.2", calling_ae="CT", instances=2))
    (tmp_path / "store" / "series" / "1.2.4" / ".state.json").write_text('{"series_uid": "1.2.4", "seg": 5}')
    assert [state.series_uid for state in storage.all()] == ["1.2.3"]
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
