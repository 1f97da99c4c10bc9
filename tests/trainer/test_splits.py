"""Nested cross-validation folds: subject level, disjoint, covering, seeded, stratified; splits.csv."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from runtime.errors import InputError
from trainer.config import CVConfig
from trainer.splits import Fold, describe_cv, make_folds, minimum_subjects, read_splits, select_fold, write_splits

IDS = [f"sub-{i:03d}" for i in range(100)]
KFOLD = CVConfig(testing_folds=5, validation_folds=5, validation_fraction=None, stratify=False)


def cv(testing: int = 5, validation: int = 5, fraction: float | None = None, stratify: bool = False) -> CVConfig:
    return CVConfig(testing_folds=testing, validation_folds=validation, validation_fraction=fraction, stratify=stratify)


def check_partition(folds: list[Fold], ids: list[str]) -> None:
    """Within a fold the roles are disjoint and cover every subject."""
    for fold in folds:
        roles = [set(fold.train), set(fold.val), set(fold.test)]
        assert sum(len(r) for r in roles) == len(ids) and set().union(*roles) == set(ids), fold.id
        assert fold.train and fold.val


def test_five_by_five_gives_25_folds_of_20_16_64_percent() -> None:
    folds = make_folds(IDS, None, KFOLD, seed=42)
    assert [f.id for f in folds] == [f"{t}.{v}" for t in range(1, 6) for v in range(1, 6)]
    assert {(len(f.train), len(f.val), len(f.test)) for f in folds} == {(64, 16, 20)}
    check_partition(folds, IDS)


def test_each_subject_is_tested_once_and_validated_once_per_outer_fold() -> None:
    ids = IDS[:23]
    folds = make_folds(ids, None, cv(5, 4), seed=1)
    check_partition(folds, ids)
    outer = {f.testing: f.test for f in folds}
    assert Counter(s for test in outer.values() for s in test) == Counter(ids)
    assert sorted(len(t) for t in outer.values()) == [4, 4, 5, 5, 5]
    for t, test in outer.items():
        inner = [f for f in folds if f.testing == t]
        assert all(f.test == test for f in inner)
        assert Counter(s for f in inner for s in f.val) == Counter(set(ids) - set(test))


def test_seeded_and_independent_of_row_order() -> None:
    first = make_folds(IDS, None, KFOLD, seed=7)
    assert make_folds(list(reversed(IDS)), None, KFOLD, seed=7) == first
    other = make_folds(IDS, None, KFOLD, seed=8)
    assert [f.test for f in other] != [f.test for f in first]
    assert [f.val for f in other] != [f.val for f in first]


def test_stratification_keeps_class_proportions() -> None:
    ids = IDS[:60]
    labels = [0] * 36 + [1] * 17 + [2] * 7
    label_of = dict(zip(ids, labels))
    totals = Counter(labels)
    folds = make_folds(ids, labels, cv(5, 3, stratify=True), seed=3)
    check_partition(folds, ids)
    for fold in folds:
        for part, share in ((fold.test, 1 / 5), (fold.val, 4 / 15)):
            counts = Counter(label_of[s] for s in part)
            for value, total in totals.items():
                assert abs(counts[value] - total * share) <= 1, (fold.id, value, counts)


def test_without_stratification_a_rare_class_can_cluster() -> None:
    """The stratified deal is what keeps the rare class spread; an unstratified one need not."""
    ids = IDS[:40]
    labels = [1 if i < 5 else 0 for i in range(40)]
    spread = {seed: max(Counter(labels[ids.index(s)] for s in f.test)[1] for f in make_folds(
        ids, labels, cv(5, 2, stratify=False), seed)) for seed in range(20)}
    stratified = [max(Counter(labels[ids.index(s)] for s in f.test)[1] for f in make_folds(
        ids, labels, cv(5, 2, stratify=True), seed)) for seed in range(20)]
    assert set(stratified) == {1}
    assert max(spread.values()) >= 2


def test_no_testing_set() -> None:
    folds = make_folds(IDS[:20], None, cv(0, 4), seed=0)
    assert [f.id for f in folds] == ["0.1", "0.2", "0.3", "0.4"]
    assert all(f.test == () and len(f.val) == 5 and len(f.train) == 15 for f in folds)
    check_partition(folds, IDS[:20])
    assert Counter(s for f in folds for s in f.val) == Counter(IDS[:20])


def test_single_validation_split() -> None:
    ids = IDS[:50]
    labels = [i % 5 == 0 for i in range(50)]       # 10 of 50 positive
    folds = make_folds(ids, labels, cv(5, 1, fraction=0.25, stratify=True), seed=0)
    assert [f.id for f in folds] == ["1.1", "2.1", "3.1", "4.1", "5.1"]
    assert {(len(f.train), len(f.val), len(f.test)) for f in folds} == {(30, 10, 10)}
    label_of = dict(zip(ids, labels))
    assert all(sum(label_of[s] for s in f.val) == 2 for f in folds)
    check_partition(folds, ids)
    single = make_folds(ids[:10], None, cv(0, 1, fraction=0.2), seed=0)
    assert [(f.id, len(f.train), len(f.val)) for f in single] == [("0.1", 8, 2)]


@pytest.mark.parametrize(("config", "fewest", "advice"), [
    (KFOLD, 7, "training, validation and testing subjects, .*; lower cross_validation.testing_folds or "
               "validation_folds, or add subjects"),
    (cv(0, 5), 5, "training and validation subjects, .*; lower cross_validation.validation_folds, or add subjects"),
    (cv(2, 3), 6, "testing subjects"), (cv(0, 1, 0.2), 2, "training and validation subjects, .*; add subjects"),
    (cv(10, 1, 0.1), 10, "lower cross_validation.testing_folds, or add")])
def test_too_few_subjects_are_refused_with_what_to_lower(config: CVConfig, fewest: int, advice: str) -> None:
    assert minimum_subjects(config) == fewest
    check_partition(make_folds(IDS[:fewest], None, config, seed=0), IDS[:fewest])
    counted = "1 subject is" if fewest == 2 else f"{fewest - 1} subjects are"
    with pytest.raises(InputError, match=f"{counted} too few .* at least {fewest};"):
        make_folds(IDS[:fewest - 1], None, config, seed=0)
    with pytest.raises(InputError, match=advice):
        make_folds(IDS[:fewest - 1], None, config, seed=0)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(InputError, match="subject ids must be unique"):
        make_folds(["a", "b", "a"] + IDS[:20], None, KFOLD, seed=0)
    with pytest.raises(InputError, match="stratified splits need one class value per subject"):
        make_folds(IDS, None, cv(stratify=True), seed=0)


def test_splits_csv_round_trip(tmp_path: Path) -> None:
    folds = make_folds(IDS[:30], None, cv(3, 2), seed=5) + make_folds(IDS[:30], None, cv(0, 2), seed=5)
    path = write_splits(folds, tmp_path / "splits.csv")
    assert read_splits(path) == folds
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "fold,subject_id,role" and len(lines) == 1 + 6 * 30 + 2 * 30
    assert b"\r" not in path.read_bytes()                       # LF lines, as every table the project writes
    assert {line.split(",")[2] for line in lines[1:]} == {"train", "validation", "testing"}
    assert not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(("text", "message"), [
    ("fold,subject,role\n", "must start with the header fold,subject_id,role"),
    ("fold,subject_id,role\n1.1,a,train\n1.1,b,holdout\n", "line 3: expected fold"),
    ("fold,subject_id,role\nx.1,a,train\n", "line 2: expected fold"),
    ("fold,subject_id,role\n1.1,a,train\n1.1,a,validation\n", "fold 1.1 needs training and validation subjects"),
    ("fold,subject_id,role\n1.1,a,train\n1.1,b,testing\n", "fold 1.1 needs training and validation subjects"),
])
def test_broken_splits_csv_is_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "splits.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError, match=message):
        read_splits(path)


def test_select_fold() -> None:
    folds = make_folds(IDS[:20], None, cv(2, 2), seed=0)
    assert select_fold(folds, "2.1") is folds[2]
    with pytest.raises(InputError, match=r"there is no fold '3.1'; the folds are 1.1, 1.2, 2.1, 2.2"):
        select_fold(folds, "3.1")


def test_a_split_that_holds_out_another_share_than_asked_says_so():
    """Two slides' patches in groups: a 34 % split holds out one slide in two."""
    cv = CVConfig(testing_folds=0, validation_folds=1, validation_fraction=0.34, stratify=False)
    ids = [f"p{i}" for i in range(24)]
    folds = make_folds(ids, None, cv, seed=0, groups=["a"] * 12 + ["b"] * 12)
    assert describe_cv(cv, folds) == ("no testing set, a 34% validation split (50% held out: subjects, and a "
                                      "group's subjects, are dealt whole)")
    even = make_folds(ids, None, CVConfig(0, 1, 0.25, False), seed=0)
    assert describe_cv(CVConfig(0, 1, 0.25, False), even) == "no testing set, a 25% validation split"


def test_one_subject_or_group_too_few_is_said_in_the_singular() -> None:
    from trainer.splits import _check_enough

    cv = CVConfig(testing_folds=0, validation_folds=2, validation_fraction=None, stratify=False)
    with pytest.raises(InputError, match=r"^1 group is too few for"):
        _check_enough(1, cv, "groups")
