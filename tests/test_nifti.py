"""The NIfTI header checks: the data size a header announces, and refusing truncated files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from runtime.errors import InputError
from runtime.io.nifti import NIFTI_HEADER_SIZE, check_nifti, nifti_data_size


@pytest.mark.parametrize("pixel, size", [(sitk.sitkUInt8, (5, 4, 3)), (sitk.sitkInt16, (7, 6)),
                                         (sitk.sitkFloat64, (3, 3, 2))])
def test_the_data_size_is_the_size_of_a_complete_file(tmp_path: Path, pixel: int, size: tuple[int, ...]) -> None:
    path = tmp_path / "image.nii"
    voxels = np.arange(int(np.prod(size))).reshape(size[::-1])
    sitk.WriteImage(sitk.Cast(sitk.GetImageFromArray(voxels), pixel), str(path))
    data = path.read_bytes()
    assert nifti_data_size(data[:NIFTI_HEADER_SIZE], path) == len(data)
    path.write_bytes(data[:-1])
    with pytest.raises(InputError, match=f"holds {len(data) - 1} bytes of the {len(data)} its header describes"):
        check_nifti(path)


def test_a_header_that_is_not_nifti_is_refused_by_path(tmp_path: Path) -> None:
    path = tmp_path / "fake.nii"
    with pytest.raises(InputError, match=r"fake\.nii does not start with a NIfTI-1 header"):
        nifti_data_size(bytes(NIFTI_HEADER_SIZE), path)
