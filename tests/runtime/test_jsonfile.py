"""JSON files read with their size bounded first: each way a file can fail is one Unreadable with
its kind, and a file over the bound is refused before its bytes are read."""
from __future__ import annotations

import os

import pytest

from runtime.jsonfile import Unreadable, read_json


def _refused(path, limit=1000, strict=False) -> Unreadable:
    with pytest.raises(Unreadable) as caught:
        read_json(path, limit, strict)
    return caught.value


def test_a_file_within_its_bound_is_read_with_or_without_a_byte_order_mark(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(b'{"a": [1, 2.5, "\xc3\xa9"]}')
    assert read_json(path, 1000) == {"a": [1, 2.5, "\u00e9"]}
    path.write_bytes(b"\xef\xbb\xbf[1]")
    assert read_json(path, 1000) == [1]
    path.write_text('{"a": NaN}')
    assert read_json(path, 1000)["a"] != read_json(path, 1000)["a"]             # NaN, where not strict
    error = _refused(path, strict=True)
    assert error.kind == "invalid" and "NaN is not a number JSON holds" in error.reason


def test_a_missing_file_and_a_folder_are_missing(tmp_path):
    assert (_refused(tmp_path / "none.json").kind, _refused(tmp_path / "none.json").reason) == ("missing", "no such file")
    assert _refused(tmp_path).reason == "not a regular file"


def test_a_file_over_its_bound_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.json"
    with open(path, "wb") as handle:                      # a sparse file: 64 GiB promised, nothing stored
        handle.truncate(64 * 2**30)
    error = _refused(path, limit=2**20)
    assert error.kind == "large" and error.reason == "68,719,476,736 bytes, more than the 1,048,576 such a file may hold"


def test_a_pipe_in_a_files_place_is_refused_without_waiting_for_a_writer(tmp_path):
    os.mkfifo(tmp_path / "state.json")
    error = _refused(tmp_path / "state.json")
    assert (error.kind, error.reason) == ("missing", "not a regular file")


@pytest.mark.parametrize("content, expected", [
    (b"[" * 100_000 + b"]" * 100_000, "not JSON (nested too deep)"),
    (b'{"a": 1', "not JSON (Expecting ',' delimiter"),
    (b"\xff\xfe[1]", "not JSON ('utf-8' codec can't decode byte 0xff"),
    (b"", "not JSON (Expecting value"),
])
def test_what_is_not_json_is_invalid(tmp_path, content, expected):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    error = _refused(path, limit=10**6)
    assert error.kind == "invalid" and error.reason.startswith(expected), error.reason
