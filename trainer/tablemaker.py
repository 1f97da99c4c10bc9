"""`trainer csv DATA_DIR --channel NAME=PATTERN ... [--label PATTERN] --output subjects.csv`: the
subject CSV made from a folder by file-name patterns.

Two layouts are read, told apart by where the files that match a pattern lie. A folder per subject
(DATA_DIR/<subject>/..., files anywhere below it): the subject is the folder's name. Flat (every
matching file directly in DATA_DIR): the subject is what the pattern's one `*` matched
(`*_t1.nii.gz` finds `sub-01` in `sub-01_t1.nii.gz`); matching files at both depths are refused.
Patterns are shell-style (`fnmatch`) on file names; a file several patterns match goes to the one
that spells most of its name (`ct_*_seg.nii.gz` before `ct_*.nii.gz`). Every subject needs exactly
one file per channel (and per label, when a label pattern is given); a subject missing one, or with
several, is an error naming it, all of them at once. A folder none of whose files match (another
format, or no subject at all) is left out and named in a warning; hidden folders, such as .git, are
passed over. Files sorted by kind into folders, as nnU-Net's `imagesTr/` and `labelsTr/`: each
pattern names its folder (`imagesTr/*_0000.nii.gz`) and matches the files directly in it, the
subject being what its `*` matched. Paths are written relative to the CSV's folder, so that the
table moves with the data.
"""
from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from runtime.commands.rows import SAFE_ID
from runtime.errors import InputError, OutputError


@dataclass(frozen=True)
class Column:
    name: str
    pattern: str


def parse_channel(text: str) -> Column:
    """`t1=*_t1.nii.gz` -> Column("t1", "*_t1.nii.gz")."""
    name, _, pattern = text.partition("=")
    if not name or not pattern or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
        raise InputError(f"--channel {text!r} is not NAME=PATTERN with a column name of letters, digits and "
                         "'_' (e.g. t1=*_t1.nii.gz).")
    return Column(name, pattern)


def _files(data_dir: Path) -> list[Path]:
    """Every file below `data_dir`, a link to a file counting as one (a dataset of links into shared
    storage); links to folders are not walked into, so no folder is read twice or in a loop."""
    found = []
    for folder, _, names in os.walk(data_dir):
        for name in names:
            path = Path(folder) / name
            if path.is_file():
                found.append(path)
    return sorted(found)


@dataclass(frozen=True)
class _Wanted:
    """A column's pattern read: the folder it names (`imagesTr/*_0000.nii.gz` -> DATA_DIR/imagesTr),
    none for a bare pattern, and its file-name pattern."""
    name: str
    pattern: str
    folder: Path | None
    file: str


def _wanted(data_dir: Path, columns: Sequence[Column], label: str | None) -> list[_Wanted]:
    """Every column's pattern (and the label's) read once; a folder part with wildcards or leaving
    DATA_DIR is refused."""
    return [_read_pattern(c, data_dir) for c in [*columns, *([Column("label", label)] if label else [])]]


def _read_pattern(column: Column, data_dir: Path) -> _Wanted:
    folder, _, name = column.pattern.rpartition("/")
    if not folder:
        return _Wanted(column.name, column.pattern, None, column.pattern)
    parts = Path(folder).parts
    if Path(folder).is_absolute() or ".." in parts or any(c in folder for c in "*?[") or not name:
        raise InputError(f"{column.name}: the folder of pattern {column.pattern!r} must be a plain folder inside "
                         "DATA_DIR, followed by a file-name pattern (e.g. imagesTr/*_0000.nii.gz).")
    return _Wanted(column.name, column.pattern, data_dir.joinpath(*parts), name)


def _matches(path: Path, column: _Wanted) -> bool:
    return fnmatch.fnmatchcase(path.name, column.file) and (column.folder is None or path.parent == column.folder)


def _taker(path: Path, wanted: Sequence[_Wanted]) -> tuple[_Wanted, str | None]:
    """The column a matching file belongs to: where several patterns match it (`ct_*.nii.gz` and
    `ct_*_seg.nii.gz` both match `ct_01_seg.nii.gz`), the one that spells most of its name, and then
    where it went, in words; refused where two spell as much."""
    matching = sorted((c for c in wanted if _matches(path, c)), key=lambda c: -_spelt(c.file))
    if len(matching) > 1 and _spelt(matching[0].file) == _spelt(matching[1].file):
        raise InputError(f"{path} matches both {matching[0].pattern} ({matching[0].name}) and "
                         f"{matching[1].pattern} ({matching[1].name}); make the patterns tell its column apart.")
    went = f"{path.name} ({', '.join(c.pattern for c in matching)}) went to {matching[0].name}"
    return matching[0], went if len(matching) > 1 else None


def _spelt(pattern: str) -> int:
    """How many characters of a name a pattern spells out, its wildcards not counted."""
    return len(re.sub(r"\[[^\]]*\]|[*?]", "", pattern))


def _one_star(pattern: str) -> bool:
    return pattern.count("*") == 1 and not any(c in pattern for c in "?[")


def _flat_id(pattern: str, name: str) -> str | None:
    """What the pattern's one `*` matched in `name`; None where it has not exactly one."""
    if not _one_star(pattern):
        return None
    before, after = pattern.split("*")
    return name[len(before):len(name) - len(after)] if len(name) >= len(before) + len(after) else None


def _subject_of(path: Path, data_dir: Path, column: _Wanted, per_folder: bool) -> str | None:
    if per_folder:
        parts = path.relative_to(data_dir).parts
        return parts[0] if len(parts) > 1 else None
    return _flat_id(column.file, path.name)


Row = tuple[str, dict[str, Path]]


def build_table(data_dir: Path, columns: Sequence[Column], label: str | None) -> list[Row]:
    """A row per subject: its id and one file per column (and `label`), sorted by id."""
    if not data_dir.is_dir():
        raise InputError(f"{data_dir} is not a folder; give the folder that holds the images.")
    names = [c.name for c in columns]
    if len(set(names)) != len(names) or "label" in names or "subject_id" in names:
        raise InputError("each --channel needs its own name, other than subject_id and label.")
    wanted = _wanted(data_dir, columns, label)
    by_kind = {c.folder is not None for c in wanted}
    absent = [c.pattern for c in wanted if c.folder is not None and not c.folder.is_dir()]
    if absent:
        present = sorted(p.name for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise InputError(f"{data_dir} has no folder {absent[0].rpartition('/')[0]} (pattern {absent[0]}); its folders "
                         f"are {', '.join(present[:10]) or 'none'}: name one of them, as it is spelt.")
    if len(by_kind) > 1:
        raise InputError("either every pattern names its folder (imagesTr/*_0000.nii.gz, labelsTr/*.nii.gz) or "
                         "none does; name the folder in each --channel and --label pattern.")
    files = [p for p in _files(data_dir) if any(_matches(p, c) for c in wanted)]
    depths = {len(p.relative_to(data_dir).parts) > 1 for p in files}
    if by_kind == {True}:
        depths = {False}
    elif len(depths) > 1:
        top = next(p.name for p in files if len(p.relative_to(data_dir).parts) == 1)
        raise InputError(f"{data_dir} holds matching files both directly in it ({top}) and in subject folders; "
                         "keep one layout: a folder per subject, or every file in DATA_DIR itself.")
    per_folder = depths == {True}
    if not per_folder:
        unusable = [c.pattern for c in wanted if not _one_star(c.file)]
        if unusable:
            raise InputError(f"in a flat folder the subject is what a pattern's one '*' matches; "
                             f"{', '.join(unusable)} need(s) exactly one '*' and no '?' or '['.")
    found: dict[str, dict[str, list[Path]]] = {}
    shared: dict[str, list[str]] = {}          # per subject, its files several patterns match and where each went
    for path in files:
        column, went = _taker(path, wanted)
        subject = _subject_of(path, data_dir, column, per_folder)
        if subject:
            found.setdefault(subject, {}).setdefault(column.name, []).append(path)
            if went:
                shared.setdefault(subject, []).append(went)
    if not found:
        raise InputError(f"no file below {data_dir} matches {', '.join(c.pattern for c in wanted)}; check the "
                         "patterns (they match file names, e.g. *_t1.nii.gz, or the names in one folder of DATA_DIR, "
                         "e.g. imagesTr/*_0000.nii.gz).")
    return _rows(found, wanted, per_folder, shared)


def unmatched_folders(rows: Sequence[Row], data_dir: Path, columns: Sequence[Column], label: str | None) -> list[str]:
    """For a table made by folder (`rows` from `build_table`), the folders directly in `data_dir` that
    hold files (hidden ones, such as .git, left out) none of which a pattern matches: subjects in
    another format (.nrrd beside .nii.gz), or no subjects at all (notes, code); none for a flat one
    or one sorted by kind."""
    wanted = _wanted(data_dir, columns, label)
    if not rows or len(next(iter(rows[0][1].values())).relative_to(data_dir).parts) == 1 or any(
            c.folder is not None for c in wanted):
        return []
    holding: dict[str, bool] = {}
    for path in _files(data_dir):
        parts = path.relative_to(data_dir).parts
        if len(parts) > 1 and not parts[0].startswith("."):
            matched = any(fnmatch.fnmatchcase(path.name, c.pattern) for c in wanted)
            holding[parts[0]] = holding.get(parts[0], False) or matched
    return sorted(folder for folder, matched in holding.items() if not matched)


def _rows(found: dict[str, dict[str, list[Path]]], wanted: Sequence[_Wanted], per_folder: bool,
          shared: dict[str, list[str]] | None = None) -> list[Row]:
    problems, failing = [], []
    for subject in sorted(found):
        before = len(problems)
        if not SAFE_ID.match(subject):
            problems.append(f"subject {subject!r} cannot be an id (letters, digits, '_', '-', '.')")
        for column in wanted:
            matched = found[subject].get(column.name, [])
            if not matched:
                problems.append(f"{subject} has no {column.name} file ({column.pattern})")
            elif len(matched) > 1:
                problems.append(f"{subject} has {len(matched)} {column.name} files ({', '.join(p.name for p in matched[:3])})")
        if len(problems) > before:
            failing += [f"{subject}'s {went}" for went in (shared or {}).get(subject, [])]
    if problems:
        shown = "; ".join(problems[:20]) + (f"; and {len(problems) - 20} more" if len(problems) > 20 else "")
        by_kind = per_folder and len(wanted) > 1 and not any(len(found[subject]) == len(wanted) for subject in found)
        kinds = (" (where the folders sort files by kind, as nnU-Net's imagesTr/ and labelsTr/, not by subject, "
                 "name the folder in each pattern: imagesTr/*_0000.nii.gz)") if by_kind else ""
        taken = (f" (a file several patterns match goes to the one that spells most of its name: "
                 f"{'; '.join(failing[:3])}{'; ...' if len(failing) > 3 else ''})") if failing else ""
        raise InputError(f"{len(problems)} problem(s) in the table: {shown}; make the patterns match one file "
                         f"per subject and column{kinds}{taken}.")
    return [(subject, {c.name: found[subject][c.name][0] for c in wanted}) for subject in sorted(found)]


def _linked(path: Path) -> Path:
    """`path` with its folders resolved, as the reader resolves the table's folder, and its own name
    kept: a link to a file stays the link."""
    return path.parent.resolve() / path.name


def write_table(rows: list[Row], output: Path) -> None:
    """The CSV, paths relative to its folder, written whole or not at all; an existing file is kept."""
    if output.exists():
        raise OutputError(f"{output} already exists; choose another --output or remove it first.")
    folder = output.parent.resolve()
    columns = list(rows[0][1])
    lines = [",".join(["subject_id", *columns])]
    for subject, paths in rows:
        cells = [subject] + [os.path.relpath(_linked(paths[k]), folder) for k in columns]
        if any("," in c or '"' in c or "\n" in c for c in cells):
            raise InputError(f"a path of subject {cells[0]} holds a comma, quote or line break, which a plain CSV "
                             "cannot hold; rename the file.")
        lines.append(",".join(cells))
    partial = output.with_name(f".{output.name}.partial")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(partial, output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise OutputError(f"cannot write {output} ({exc.strerror or exc}); choose another --output.") from None
