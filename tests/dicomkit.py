"""Helpers for tests (and benchmarks) that handle DICOM series and run dcmtk's tools."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable


BONE_CODES = {"category": {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"},
              "type": {"scheme": "SCT", "value": "272673000", "meaning": "Bone"}}


def dciodvfy(path: Path) -> list[str]:
    """The lines of dicom3tools' validator that report an error."""
    from tests.conftest import missing

    if shutil.which("dciodvfy") is None:
        missing("dciodvfy is not installed: apt-get install dicom3tools")
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def dcmtk_tool(tool: str) -> str | None:
    """The path of dcmtk's `tool` (storescu, storescp): the first on PATH that is a compiled program,
    not the pynetdicom app of the same name (a Python script) that a virtual environment, this one
    or another, puts on PATH; None where dcmtk is not installed."""
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which(tool, path=folder) if folder else None
        if found is not None:
            with open(found, "rb") as handle:
                if handle.read(4) == b"\x7fELF":
                    return found
    return None


def copy_series(source: Path, target: Path, *, study_uid: str | None = None, series_uid: str | None = None,
                prefix: str = "", sop_from_meta: bool = False,
                edit: Callable[[int, Any], None] | None = None) -> str:
    """Copy the series at `source` into `target` as another series: the study and series UIDs
    given (fresh ones for the series where none is), each instance a fresh SOP Instance UID, or
    with `sop_from_meta` its SOP Class and Instance UIDs from its file meta (for files whose data
    set lacks them); `edit(index, dataset)` may change each instance before it is written as
    `prefix` + its name. The series' UID."""
    import pydicom
    from pydicom.uid import generate_uid

    series_uid = series_uid or generate_uid()
    target.mkdir(parents=True, exist_ok=True)
    for index, path in enumerate(sorted(source.iterdir())):
        dataset = pydicom.dcmread(path)
        dataset.SeriesInstanceUID = series_uid
        if study_uid is not None:
            dataset.StudyInstanceUID = study_uid
        if sop_from_meta:
            dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        else:
            dataset.SOPInstanceUID = generate_uid()
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        if edit is not None:
            edit(index, dataset)
        dataset.save_as(target / f"{prefix}{path.name}")
    return series_uid


def add_report(folder: Path, name: str = "zz_report.dcm") -> Path:
    """A Basic Text SR of the folder's study written beside its slices: a DICOM object without
    pixel data, as modalities leave in a study's folder."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slice_ = pydicom.dcmread(next(p for p in sorted(folder.iterdir()) if p.is_file()), stop_before_pixels=True)
    report = pydicom.Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    report.SOPInstanceUID, report.SeriesInstanceUID = generate_uid(), generate_uid()
    report.StudyInstanceUID, report.Modality = slice_.StudyInstanceUID, "SR"
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID = report.SOPClassUID
    report.file_meta.MediaStorageSOPInstanceUID = report.SOPInstanceUID
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.save_as(folder / name, enforce_file_format=True)
    return folder / name


def predict(*args: object) -> str:
    """`runtime predict ARGS --quiet`, which must succeed; what it printed."""
    from click.testing import CliRunner

    from runtime.commands.cli import main

    result = CliRunner().invoke(main, ["predict", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def refused_inside_the_series(series: Path, copy: Path, model: Path, option: str, name: str) -> None:
    """`runtime predict COPY --model MODEL OPTION PATH` with PATH in a copy of `series` at `copy`
    (a new file `name` there, or over one of its slices): refused in one line, the copy untouched."""
    import shutil

    from tests.modelkit import run_failing

    shutil.copytree(series, copy)
    for inside in (copy / name, copy / "01.dcm"):
        run_failing(["predict", str(copy), "--model", str(model), option, str(inside)],
                    f"lies in the input folder {copy}")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in series.iterdir())
    assert (copy / "01.dcm").read_bytes() == (series / "01.dcm").read_bytes()
