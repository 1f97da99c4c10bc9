"""The CSV of a `--csv` run: its rows, paths relative to its folder, and the subject ids that name
output files."""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from runtime import metrics
from runtime.errors import InputError

SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve(csv_path: Path, value: str) -> Path:
    """`value` as a path, relative ones taken from the CSV's folder."""
    path = Path(value)
    return path if path.is_absolute() else csv_path.parent / path


def read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV's column names and rows; InputError where it cannot be read as a CSV."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{csv_path} cannot be read as a CSV ({exc}).") from None


def dice_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of each `dice_<class>` column of the first row, over the rows."""
    columns = [k for k in (rows[0] if rows else {}) if k.startswith("dice_")]
    summary = []
    for column in columns:
        mean, std = metrics.mean_std([r[column] for r in rows if column in r])
        summary.append({"metric": column, "mean": round(mean, 6), "std": round(std, 6), "n": len(rows)})
    return summary
