"""Whole-subject validation says how far it has got where no progress bar can be drawn (a log file)."""
from __future__ import annotations

from click.testing import CliRunner

import trainer.progress
from tests.trainerkit import TINY_RUN, blob_subjects, write_config
from trainer.cli import main


def test_validation_says_how_many_subjects_it_has_done_in_a_log_file(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer.progress, "HEARTBEAT_S", 0.0)
    blob_subjects(tmp_path, count=8)
    config = write_config(tmp_path, {**TINY_RUN, "training": {**TINY_RUN["training"], "epochs": 1},
                                     "cross_validation": {"testing_folds": 0, "validation_fraction": 0.5}})
    result = CliRunner().invoke(main, ["fit", str(config)])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "epoch 1 validation:" in line]
    assert [line.split(",")[0] for line in lines] == [f"fold 0.1 epoch 1 validation: {n}/4 subjects" for n in (1, 2, 3)]
    assert all(line.endswith(" s") for line in lines)


def test_ticking_counts_each_item_once_it_is_taken():
    counted: list[int] = []

    class Bar:
        def update(self, n: int) -> None:
            counted.append(n)

    items = trainer.progress.Ticking([10, 20, 30], Bar())
    assert len(items) == 3 and items[1] == 20
    seen = []
    for item in items:
        seen.append((item, len(counted)))
    assert seen == [(10, 0), (20, 1), (30, 2)] and counted == [1, 1, 1]
    again = trainer.progress.Ticking([10, 20, 30], Bar())
    counted.clear()
    for item in again:                         # a pass given up at the second item (the GPU out of memory)
        if item == 20:
            break
    assert counted == [1]
    assert list(again) == [10, 20, 30] and counted == [1, 1, 1]     # the pass on the CPU: the rest counted
