"""Nested cross-validation at subject level: testing folds outside, validation folds inside.

The outer split deals the subjects into `testing_folds` groups; each group is the testing set of
one outer fold (none with testing_folds 0). The rest of each outer fold is dealt again into
`validation_folds` groups, or split once by `validation_fraction`. Fold "t.v" tests on outer
group t (0: no testing set) and validates on inner group v; it trains on everything else.

Dealing: the subjects (sorted by id, so the CSV's row order does not matter) are shuffled with
the seed; when stratified they are then grouped by class, keeping the shuffled order inside each
class; position i of that sequence goes to group i mod k. Every group therefore holds each class
within one subject of its share, and groups differ in size by at most one. A single split takes
evenly spaced positions of the same sequence, so it keeps the class proportions too.

Groups (`data.group_column`: the patches of one slide, the slides of one patient) are dealt
instead of subjects, each with its most common class value, so all of a group's subjects share
their role in every fold.
"""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from runtime.errors import InputError
from runtime.validation import check_table_size
from trainer.atomic import replace_text
from trainer.config import Config, CVConfig

ROLES = ("train", "validation", "testing")
SPLITS_FILE = "splits.csv"


@dataclass(frozen=True)
class Fold:
    testing: int                   # 1-based outer fold; 0 when there is no testing set
    validation: int                # 1-based inner fold
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.testing}.{self.validation}"

    def role_ids(self) -> dict[str, tuple[str, ...]]:
        return {"train": self.train, "validation": self.val, "testing": self.test}


def describe_cv(cv: CVConfig, folds: Sequence[Fold] = ()) -> str:
    """e.g. "5 testing folds x 5 validation folds", "no testing set, a 20% validation split"; with
    the `folds` made, a split whose share held out differs from the one asked for by 5 points or
    more says the share (subjects, or a group's subjects, are dealt whole)."""
    if cv.validation_fraction is not None:
        inner = f"a {cv.validation_fraction:.0%} validation split"
        shares = [len(f.val) / (len(f.train) + len(f.val)) for f in folds if f.train or f.val]
        held = sum(shares) / len(shares) if shares else cv.validation_fraction
        if abs(held - cv.validation_fraction) >= 0.05:
            inner += f" ({held:.0%} held out: subjects, and a group's subjects, are dealt whole)"
    else:
        inner = f"{cv.validation_folds} validation folds"
    return f"{cv.testing_folds} testing folds x {inner}" if cv.testing_folds else f"no testing set, {inner}"


def subject_folds(config: Config, subjects: Sequence[Any]) -> list[Fold]:
    """The config's folds over its subjects (or their groups), stratified by class label for classification."""
    labels = [s.label for s in subjects] if config.task == "classification" else None
    groups = [s.group for s in subjects] if config.data.group_column else None
    return make_folds([s.subject_id for s in subjects], labels, config.cross_validation, config.seed, groups)


def make_folds(subject_ids: Sequence[str], labels: Sequence[Any] | None, cv: CVConfig, seed: int,
               groups: Sequence[str] | None = None) -> list[Fold]:
    """Every (testing, validation) fold of the nested split; `labels` (class values) are needed to stratify.

    `groups` (one per subject) keeps each group's subjects together: the groups are dealt, each with its
    most common class value (the smallest of those tied)."""
    if groups is None:
        return _subject_level(subject_ids, labels, cv, seed, "subjects")
    if len(groups) != len(subject_ids):
        raise InputError("grouped splits need one group per subject; check data.group_column.")
    members: dict[str, list[str]] = {}
    for subject_id, group in zip(subject_ids, groups):
        members.setdefault(group, []).append(subject_id)
    group_labels = None
    if labels is not None:
        label_of = dict(zip(subject_ids, labels))
        group_labels = [_most_common([label_of[s] for s in ids]) for ids in members.values()]
    folds = _subject_level(list(members), group_labels, cv, seed, "groups (data.group_column)")
    return [_expanded(fold, members) for fold in folds]


def _most_common(values: Sequence[Any]) -> Any:
    counts = Counter(values)
    return min(counts, key=lambda value: (-counts[value], value))


def _expanded(fold: Fold, members: Mapping[str, Sequence[str]]) -> Fold:
    """A fold of groups as the fold of their subjects."""
    def subjects(groups: Sequence[str]) -> tuple[str, ...]:
        return tuple(sorted(s for group in groups for s in members[group]))
    return Fold(testing=fold.testing, validation=fold.validation, train=subjects(fold.train),
                val=subjects(fold.val), test=subjects(fold.test))


def _subject_level(subject_ids: Sequence[str], labels: Sequence[Any] | None, cv: CVConfig, seed: int,
                   unit: str) -> list[Fold]:
    """The nested split of `subject_ids` (subjects, or groups: `unit` names them in messages)."""
    ids = sorted(subject_ids)
    if len(set(ids)) != len(ids):
        raise InputError("subject ids must be unique to split them; see `trainer check`.")
    if cv.stratify and (labels is None or len(labels) != len(subject_ids)):
        raise InputError("stratified splits need one class value per subject; set cross_validation.stratify: false.")
    label_of = dict(zip(subject_ids, labels)) if cv.stratify and labels is not None else None
    _check_enough(len(ids), cv, unit)
    outer = _deal(ids, label_of, cv.testing_folds, np.random.default_rng(seed)) if cv.testing_folds else [[]]
    folds = []
    for t, test in enumerate(outer, start=1 if cv.testing_folds else 0):
        rest = sorted(set(ids) - set(test))
        inner = _inner(rest, label_of, cv, np.random.default_rng([seed, t]))
        for v, val in enumerate(inner, start=1):
            train = sorted(set(rest) - set(val))
            folds.append(Fold(testing=t, validation=v, train=tuple(train), val=tuple(sorted(val)),
                              test=tuple(sorted(test))))
    return folds


def _ordered(ids: list[str], label_of: Mapping[str, Any] | None, rng: np.random.Generator) -> list[str]:
    """The ids shuffled; grouped by class (shuffled order kept inside each class) when stratifying."""
    shuffled = [ids[i] for i in rng.permutation(len(ids))]
    if label_of is None:
        return shuffled
    rank = {value: i for i, value in enumerate(sorted({label_of[s] for s in ids}))}
    return sorted(shuffled, key=lambda s: rank[label_of[s]])


def _deal(ids: list[str], label_of: Mapping[str, Any] | None, k: int, rng: np.random.Generator) -> list[list[str]]:
    sequence = _ordered(ids, label_of, rng)
    return [sequence[i::k] for i in range(k)]


def _inner(rest: list[str], label_of: Mapping[str, Any] | None, cv: CVConfig,
           rng: np.random.Generator) -> list[list[str]]:
    if cv.validation_fraction is None:
        return _deal(rest, label_of, cv.validation_folds, rng)
    sequence = _ordered(rest, label_of, rng)
    count = min(len(rest) - 1, max(1, round(len(rest) * cv.validation_fraction)))
    return [[sequence[int((j + 0.5) * len(rest) / count)] for j in range(count)]]


def minimum_subjects(cv: CVConfig) -> int:
    """The fewest subjects for which every fold has training, validation and (unless disabled) testing subjects."""
    n = 2
    while not _enough(n, cv):
        n += 1
    return n


def _enough(n: int, cv: CVConfig) -> bool:
    k = cv.testing_folds
    if k and n < k:
        return False
    rest = n - (math.ceil(n / k) if k else 0)
    return rest >= 2 and (cv.validation_fraction is not None or rest >= cv.validation_folds)


def _check_enough(n: int, cv: CVConfig, unit: str = "subjects") -> None:
    if not _enough(n, cv):
        folds = [key for key, used in (("testing_folds", cv.testing_folds),
                                       ("validation_folds", cv.validation_fraction is None)) if used]
        roles = "training, validation and testing" if cv.testing_folds else "training and validation"
        lower = f"lower cross_validation.{' or '.join(folds)}, or " if folds else ""
        counted = f"{n} {unit} are" if n != 1 else f"1 {unit[:-1]} is"
        raise InputError(f"{counted} too few for {describe_cv(cv)}: every fold needs {roles} {unit}, which "
                         f"takes at least {minimum_subjects(cv)}; {lower}add {unit}.")


def select_fold(folds: Sequence[Fold], fold_id: str) -> Fold:
    """The fold with this id ("2.1"); InputError lists the valid ids otherwise."""
    for fold in folds:
        if fold.id == fold_id:
            return fold
    raise InputError(f"there is no fold {fold_id!r}; the folds are {', '.join(f.id for f in folds)}.")


def fold_table(folds: Sequence[Fold], label_of: Mapping[str, Any] | None = None) -> str:
    """One line per fold: subject counts per role, with class counts (value:count) when labels are given."""
    lines = [f"{'fold':<6} {'train':>6} {'validation':>10} {'testing':>8}" + ("   classes train | validation | testing"
                                                                            if label_of is not None else "")]
    for fold in folds:
        line = f"{fold.id:<6} {len(fold.train):>6} {len(fold.val):>10} {len(fold.test):>8}"
        if label_of is not None:
            line += "   " + " | ".join(_class_counts(ids, label_of) for ids in (fold.train, fold.val, fold.test))
        lines.append(line)
    return "\n".join(lines)


def _class_counts(ids: Sequence[str], label_of: Mapping[str, Any]) -> str:
    counts = Counter(label_of[s] for s in ids)
    return " ".join(f"{value}:{counts[value]}" for value in sorted(counts)) or "-"


def write_splits(folds: Sequence[Fold], path: Path | str) -> Path:
    """Write splits.csv (fold,subject_id,role), replacing the file whole (`trainer.atomic`)."""
    path = Path(path)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["fold", "subject_id", "role"])
    for fold in folds:
        for role, ids in fold.role_ids().items():
            writer.writerows([fold.id, subject_id, role] for subject_id in ids)
    replace_text(path, text.getvalue())
    return path


def read_splits(path: Path | str) -> list[Fold]:
    """Read splits.csv back into folds, in the order they first appear; InputError says which line is wrong."""
    path = Path(path)
    check_table_size(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path} cannot be read ({exc}); rewrite it with `trainer splits CONFIG --write`.") from None
    if not rows or rows[0] != ["fold", "subject_id", "role"]:
        raise InputError(f"{path} must start with the header fold,subject_id,role; rewrite it with `trainer splits`.")
    members: dict[str, dict[str, list[str]]] = {}
    for line, row in enumerate(rows[1:], start=2):
        fold_id, subject_id, role = _split_row(row, line, path)
        members.setdefault(fold_id, {r: [] for r in ROLES})[role].append(subject_id)
    return [_fold(fold_id, roles, path) for fold_id, roles in members.items()]


def _split_row(row: list[str], line: int, path: Path) -> tuple[str, str, str]:
    if len(row) != 3 or not row[1] or row[2] not in ROLES or _fold_numbers(row[0]) is None:
        raise InputError(f"{path} line {line}: expected fold (t.v), subject_id and role ({', '.join(ROLES)}), "
                         f"got {','.join(row)!r}.")
    return row[0], row[1], row[2]


def _fold_numbers(fold_id: str) -> tuple[int, int] | None:
    parts = fold_id.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or int(parts[1]) < 1:
        return None
    return int(parts[0]), int(parts[1])


def _fold(fold_id: str, roles: dict[str, list[str]], path: Path) -> Fold:
    every = [s for ids in roles.values() for s in ids]
    if not roles["train"] or not roles["validation"] or len(set(every)) != len(every):
        raise InputError(f"{path}: fold {fold_id} needs training and validation subjects, each subject in one role "
                         "only; rewrite it with `trainer splits CONFIG --write`.")
    testing, validation = _fold_numbers(fold_id)  # type: ignore[misc]
    return Fold(testing=testing, validation=validation, train=tuple(roles["train"]),
                val=tuple(roles["validation"]), test=tuple(roles["testing"]))
