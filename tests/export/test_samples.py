"""The scans `export build --sample` checks parity on: read as the model reads them, or refused
with one line naming the sample."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from export.from_run import sample_inputs
from runtime.errors import InputError
from tests.modelkit import blob_volume, write_scan
from tests.trainerkit import TINY_RUN, changed, write_config
from trainer.config import load_config

FLAT = changed(TINY_RUN, dimensions=2, patch__size=[16, 16], preprocessing=[],
               augmentation={"flip": {"probability": 0.5, "axes": [0, 1]}})


def test_a_volume_given_to_a_2d_model_is_sampled_at_its_middle_slice(tmp_path):
    config = load_config(write_config(tmp_path, FLAT))
    volume = blob_volume((5, 24, 20))
    inputs = sample_inputs(config, [write_scan(tmp_path / "volume.nii.gz", volume)])
    assert inputs[0].shape == (1, 1, 16, 16)
    np.testing.assert_array_equal(inputs[0][0, 0], volume[2, 4:20, 2:18])       # the central window of slice 2


def test_a_sample_of_other_channels_or_fewer_dimensions_is_one_line_naming_it(tmp_path):
    flat = load_config(write_config(tmp_path, FLAT, "flat.yaml"))
    colour = tmp_path / "colour.png"
    Image.fromarray(np.arange(20 * 24 * 3).reshape(20, 24, 3).astype(np.uint8)).save(colour)
    with pytest.raises(InputError, match=rf"--sample {colour}: it gives 3 channel\(s\) \(a colour image's components "
                                         r"are channels\) where the model takes 1 \(image\)"):
        sample_inputs(flat, [colour])
    volumes = load_config(write_config(tmp_path, TINY_RUN, "volumes.yaml"))
    grey = tmp_path / "grey.png"
    Image.fromarray(np.arange(20 * 24).reshape(20, 24).astype(np.uint8)).save(grey)
    with pytest.raises(InputError, match=rf"--sample {grey}: it is a 2D image and the model is 3D; give a volume"):
        sample_inputs(volumes, [grey])
