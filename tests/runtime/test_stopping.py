"""SIGTERM and SIGHUP as errors: raised once, cleanups not cut short, a nohup run left alone, a forked
worker left to the signal's default action, and a job's outputs published whole or not at all."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from runtime.errors import OutputError
from runtime.io.write import OutputSet
from runtime.stopping import Stopped, stops_as_errors, stops_held


def test_a_stop_is_raised_once_and_a_second_does_not_cut_the_cleanup_short() -> None:
    cleaned = False
    with pytest.raises(Stopped) as stopped:
        with stops_as_errors():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os.kill(os.getpid(), signal.SIGHUP)      # ignored while the first stop unwinds
                cleaned = True
    assert stopped.value.signum == signal.SIGTERM and cleaned
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and signal.getsignal(signal.SIGHUP) is signal.SIG_DFL


def test_a_signal_the_caller_ignores_stays_ignored() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)    # as nohup leaves it
    try:
        with stops_as_errors():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_forked_worker_takes_the_default_action() -> None:
    with stops_as_errors():
        child = os.fork()
        if child == 0:                                         # a data loader's worker, say
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
            finally:
                os._exit(3)
        _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def test_a_held_stop_waits_for_the_section_to_end() -> None:
    done = []
    with pytest.raises(Stopped):
        with stops_as_errors():
            with stops_held():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                done.append("the whole section")
            done.append("after it")
    assert done == ["the whole section"]


@pytest.mark.parametrize("signum, raised", [(signal.SIGTERM, Stopped), (signal.SIGINT, KeyboardInterrupt)],
                         ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_while_outputs_are_published_publishes_them_all(tmp_path, monkeypatch, signum, raised) -> None:
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("old\n")
    real = os.replace
    published = []

    def replace(source, target):
        real(source, target)
        if not Path(target).name.startswith("."):             # not a replaced file set aside
            published.append(target)
            if len(published) == 1:
                os.kill(os.getpid(), signum)                  # between the first file published and the second
                time.sleep(0.05)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(raised):
        with stops_as_errors(), OutputSet() as outputs:
            outputs.table([{"x": 1}], ["x"], tmp_path / "a.csv")
            outputs.table([{"x": 2}], ["x"], tmp_path / "b.csv")
    assert (tmp_path / "a.csv").read_text() == "x\n1\n" and (tmp_path / "b.csv").read_text() == "x\n2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_set_that_cannot_be_published_whole_leaves_every_earlier_file(tmp_path, monkeypatch) -> None:
    """A failed rename puts back what the set had replaced; a folder in a file's place refuses the
    set before the first rename."""
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("old\n")
    real = os.replace

    def replace(source, target):
        if Path(target) == tmp_path / "b.csv" and Path(source).name == "b.csv":
            raise PermissionError(13, "Permission denied")
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match=r"cannot publish .*b\.csv: Permission denied; nothing was published"):
        with OutputSet() as outputs:
            outputs.table([{"x": 1}], ["x"], tmp_path / "a.csv")
            outputs.table([{"x": 2}], ["x"], tmp_path / "new.csv")
            outputs.table([{"x": 3}], ["x"], tmp_path / "b.csv")
    monkeypatch.setattr(os, "replace", real)
    assert [(tmp_path / n).read_text() for n in ("a.csv", "b.csv")] == ["old\n", "old\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.csv"]
    with pytest.raises(OutputError, match=r"cannot publish .*b\.csv: a folder is in its place; nothing was published"):
        with OutputSet() as outputs:
            outputs.table([{"x": 1}], ["x"], tmp_path / "a.csv")
            outputs.table([{"x": 3}], ["x"], tmp_path / "b.csv")
            (tmp_path / "b.csv").unlink()
            (tmp_path / "b.csv").mkdir()
    assert (tmp_path / "a.csv").read_text() == "old\n" and (tmp_path / "b.csv").is_dir()


def test_a_held_stop_wins_over_an_error_the_section_raised() -> None:
    """A batch goes on past a job that failed to publish; the stop that came meanwhile must not
    wait for the next job."""
    with pytest.raises(KeyboardInterrupt) as raised:
        with stops_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            raise OutputError("cannot publish x: disk full")
    assert isinstance(raised.value.__context__, OutputError)
    with stops_held():                                          # nothing left pending
        pass


def test_an_earlier_file_is_never_missing_while_a_set_is_published(tmp_path, monkeypatch) -> None:
    """Each replaced file keeps a second name until the last rename: a kill at any moment leaves
    every earlier output in place, old or new."""
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("old\n")
    real = os.replace
    seen = []

    def replace(source, target):
        seen.append(sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")))
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with OutputSet() as outputs:
        outputs.table([{"x": 1}], ["x"], tmp_path / "a.csv")
        outputs.table([{"x": 2}], ["x"], tmp_path / "b.csv")
    assert seen and all(names == ["a.csv", "b.csv"] for names in seen)


def test_earlier_files_that_cannot_be_put_back_are_kept_and_named(tmp_path, monkeypatch) -> None:
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("old\n")
    real = os.replace

    def replace(source, target):
        if Path(target).name == "b.csv" or Path(source).name.startswith(".replaced-"):
            raise OSError(5, "Input/output error")              # the publish of b, then every put-back
        real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError) as raised:
        with OutputSet() as outputs:
            outputs.table([{"x": 1}], ["x"], tmp_path / "a.csv")
            outputs.table([{"x": 2}], ["x"], tmp_path / "b.csv")
    [kept] = tmp_path.glob(".medflow-kept-*")
    assert f"the earlier {tmp_path / 'a.csv'} (as .replaced-0) could not be put back: they are in {kept}" \
        in str(raised.value)
    assert (kept / ".replaced-0").read_text() == "old\n" and (tmp_path / "b.csv").read_text() == "old\n"


def test_a_stop_raised_in_place_of_a_failed_publish_says_that_error_too(tmp_path) -> None:
    """The publish's error may name where earlier files were kept: it is not lost behind the stop."""
    import click
    from click.testing import CliRunner

    from runtime.commands.reporting import reports_errors

    @click.command()
    @reports_errors
    def publish() -> None:
        with stops_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            raise OutputError(f"cannot publish {tmp_path / 'b.csv'}: Input/output error; the earlier one is kept")

    result = CliRunner().invoke(publish, [])
    assert result.exit_code == 130
    assert result.output.splitlines() == [
        f"error: cannot publish {tmp_path / 'b.csv'}: Input/output error; the earlier one is kept",
        "error: stopped by SIGINT (Ctrl-C) before the command finished"]


def test_another_users_earlier_file_that_can_be_neither_linked_nor_read_is_still_replaced(tmp_path,
                                                                                          monkeypatch) -> None:
    """Protected hard links and a mode of 0600 keep both a second name and a copy from being made:
    the earlier file is renamed aside instead, as before second names existed."""
    import shutil

    (tmp_path / "a.csv").write_text("old\n")

    def refused(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refused)
    monkeypatch.setattr(shutil, "copy2", refused)
    with OutputSet() as outputs:
        outputs.table([{"x": 1}], ["x"], tmp_path / "a.csv")
    assert (tmp_path / "a.csv").read_text() == "x\n1\n" and [p.name for p in tmp_path.iterdir()] == ["a.csv"]
