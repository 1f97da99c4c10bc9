"""Shared fixtures: the real test data folder, and small scans made in code."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "model_repository" / "demo_bright_structures"


def data_root() -> Path:
    return Path(os.environ.get("TEST_DATA_DIR", REPO.parent / "shared" / "data"))


def missing(message: str) -> None:
    """Stop a test whose data or tool is not here: a failure under CI, which must have them all
    (see .ci/run), a skip with `message` elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must provide it: see .ci/run)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real scans (see ../shared/data/README.md); CI must have them, elsewhere their tests skip."""
    root = data_root()
    if not (root / "radiology").is_dir():
        missing(f"real test data not found at {root}; set TEST_DATA_DIR to the shared data folder")
    return root


@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    """A small real 3D segmentation model in tmp_path/repo (tests.modelkit.bright_model)."""
    from tests.modelkit import bright_model

    return bright_model(tmp_path / "repo")


@pytest.fixture()
def scan(tmp_path: Path) -> Path:
    """A small positive volume with a bright blob, as tmp_path/scan.nii.gz."""
    from tests.modelkit import blob_volume, write_scan

    return write_scan(tmp_path / "scan.nii.gz", blob_volume((10, 20, 20)))


@pytest.fixture(scope="module")
def highdicom():
    """highdicom, which the DICOM SEG and SR tests read their outputs back with."""
    try:
        import highdicom
    except ImportError:
        missing("highdicom is not installed: pip install -e '.[dev,dicom]'")
    return highdicom
