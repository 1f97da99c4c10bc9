"""Bad slides, masks, models and options: one `error:` line each, exit 1, nothing written, and an
earlier good output left as it was."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from runtime.commands.cli import main
from runtime.errors import InputError

from tests.modelkit import bright_model, run_failing, write_scan
from tests.slidekit import stain_model, tissue_image, without_tiles, write_slide


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slide_errors")
    image, _ = tissue_image(800, 1200)
    slide = write_slide(folder / "slide.tif", image, mpp=0.5, levels=2)
    return folder, image, slide, stain_model(folder / "repository", mpp=1.0, patch=128)


def unchanged_folder(folder):
    return sorted((p.name, p.read_bytes()) for p in folder.iterdir() if p.is_file())


def fails_cleanly(out_dir, args, *expected):
    before = unchanged_folder(out_dir)
    run_failing(["predict", *map(str, args)], *expected)
    assert unchanged_folder(out_dir) == before
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")], "a staging or scratch folder was left"


def test_a_file_openslide_cannot_read(case, tmp_path):
    folder, image, slide, model = case
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"II*\x00" + bytes(range(256)) * 40)
    fails_cleanly(tmp_path, [junk, "--model", model, "--output", tmp_path / "l.tif"], "junk.svs")


def test_a_truncated_slide(case, tmp_path):
    folder, image, slide, model = case
    cut = tmp_path / "cut.tif"
    data = slide.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    fails_cleanly(tmp_path, [cut, "--model", model, "--output", tmp_path / "l.tif"], "cut.tif")


def test_a_slide_whose_tile_does_not_decode_names_the_region_read_and_the_remedy(case, tmp_path):
    import tifffile

    folder, image, slide, model = case
    damaged = tmp_path / "damaged.tif"
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tiff:
        page = tiff.pages[1]                        # level 1, the model's 1 um/pixel
        offset, size = page.dataoffsets[1], page.databytecounts[1]
    data[offset:offset + size] = bytes(size)        # a zlib stream of zeros does not inflate
    damaged.write_bytes(bytes(data))
    fails_cleanly(tmp_path, [damaged, "--model", model, "--output", tmp_path / "l.tif"], "damaged.tif: reading",
                  "pixels of level 1 from level-0", "copy it again from its source")


def test_a_tile_missing_inside_tissue_is_refused_where_an_area_missing_on_every_level_runs_as_glass(tmp_path):
    image, _ = tissue_image(800, 1200)              # stroma over level-0 rows 160-640, columns 200-840
    slide = write_slide(tmp_path / "slide.tif", image, mpp=0.5, levels=3, tile=32)    # the mask is made on level 2
    model = stain_model(tmp_path / "repository", mpp=1.0, patch=128)       # read from level 1, 19 tiles a row
    missing = without_tiles(slide, tmp_path / "missing.tif", {1: [5 * 19 + 5]})   # level-0 rows and columns 320-383
    result = CliRunner().invoke(main, ["predict", str(missing), "--model", str(model), "--output",
                                       str(tmp_path / "l.tif")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    last = result.output.strip().splitlines()[-1]                # after the slide's and the tissue's lines
    assert last.startswith(f"error: {missing}: level 1 holds no image at level-0 pixel"), last
    assert "inside the tissue mask" in last and "copy the slide again from its source" in last, last
    assert not (tmp_path / "l.tif").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    # glass at level-0 columns 896-959, in windows that touch the tissue, left out on levels 0 and 1 as
    # a scanner leaves out an empty area
    unscanned = without_tiles(slide, tmp_path / "unscanned.tif",
                              {0: [row * 38 + col for row in range(25) for col in (28, 29)],
                               1: [row * 19 + 14 for row in range(13)]})
    for name in (slide, unscanned):
        result = CliRunner().invoke(main, ["predict", str(name), "--model", str(model), "--output",
                                           str(tmp_path / f"{name.stem}.labels.tif"), "--quiet"])
        assert result.exit_code == 0, result.output
    import tifffile

    intact, left_out = (tifffile.imread(tmp_path / f"{n}.labels.tif") for n in ("slide", "unscanned"))
    np.testing.assert_array_equal(left_out, intact)


def test_a_tile_missing_from_the_level_the_tissue_is_found_on_is_refused(tmp_path):
    """The tissue mask is made on level 2, where a missing tile would read as glass and its tissue
    be skipped; a slide of one level cannot tell a missing tile from an unscanned area."""
    image, _ = tissue_image(800, 1200)              # stroma over level-0 rows 160-640, columns 200-840
    model = stain_model(tmp_path / "repository", mpp=1.0, patch=128)
    slide = write_slide(tmp_path / "slide.tif", image, mpp=0.5, levels=3, tile=32)    # level 2: 10 tiles a row
    coarse = without_tiles(slide, tmp_path / "coarse.tif", {2: [2 * 10 + 3]})         # level-0 rows 256-383
    flat = without_tiles(write_slide(tmp_path / "flat.tif", image, mpp=0.5, levels=1, tile=32),
                         tmp_path / "flat_hole.tif", {0: [10 * 38 + 12]})               # 38 tiles a row
    for damaged, expected in ((coarse, "level 2 holds no image at level-0 pixel (392, 264), where level 0 does; a "
                                       "tile is missing from the file there"),
                              (flat, "its one level holds no image at level-0 pixel")):
        fails_cleanly(tmp_path, [damaged, "--model", model, "--output", tmp_path / "l.tif"],
                      f"{damaged}: {expected}")
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    rgba[:100, :, 3] = 0                                   # a plain image's transparent background: no tile lost
    Image.fromarray(rgba).save(tmp_path / "transparent.png")
    result = CliRunner().invoke(main, ["predict", str(tmp_path / "transparent.png"), "--model", str(model), "--mpp",
                                       "0.5", "--output", str(tmp_path / "transparent.tif"), "--quiet"])
    assert result.exit_code == 0, result.output


def test_a_small_area_missing_on_every_level_inside_tissue_runs_as_glass(tmp_path):
    """An area a scanner left out (no level holds it) smaller than the mask's hole filling lies
    inside the tissue mask, yet is not a missing tile: it runs, as glass."""
    import tifffile

    from export import graphs
    from tests.modelkit import make_model

    image, _ = tissue_image(800, 1200)
    slide = write_slide(tmp_path / "slide.tif", image, mpp=0.5, levels=3, tile=32)
    model = make_model(tmp_path / "repository", graphs.stain_classes(), name="stain", modality="histology",
                       dimensions=2, axis_order="yx", channels=["red", "green", "blue"],
                       classes=[{"value": 0, "name": "background"}, {"value": 1, "name": "nuclei"},
                                {"value": 2, "name": "stroma"}],
                       preprocessing=[{"name": "normalize", "params": {"mean": [0, 0, 0], "std": [255, 255, 255]}}],
                       window={"mode": "sliding", "patch_size": [128, 128], "overlap": 0.25, "blending": "gaussian",
                               "batch_size": 4, "mirror_axes": [], "skip_background": True},
                       slide={"mpp": 1.0, "tissue_mpp": 8.0, "min_object_um2": 2000.0, "min_hole_um2": 10000.0})
    # level-0 rows 256-383, columns 384-511 (64 x 64 microns) on each level's tiles of 32
    unscanned = without_tiles(slide, tmp_path / "unscanned.tif",
                              {0: [row * 38 + col for row in range(8, 12) for col in range(12, 16)],
                               1: [row * 19 + col for row in (4, 5) for col in (6, 7)], 2: [2 * 10 + 3]})
    for name in (slide, unscanned):
        result = CliRunner().invoke(main, ["predict", str(name), "--model", str(model), "--output",
                                           str(tmp_path / f"{name.stem}.labels.tif"), "--quiet"])
        assert result.exit_code == 0, result.output
    intact, left_out = (tifffile.imread(tmp_path / f"{n}.labels.tif") for n in ("slide", "unscanned"))
    area = (slice(128, 192), slice(192, 256))                           # the area, in the map's 1 um pixels
    assert (left_out[area] == 0).all() and (intact[area] > 0).all()
    left_out[area] = intact[area]
    assert (left_out != intact).mean() < 0.01          # the windows over its edge blend a little glass in


@pytest.mark.filterwarnings("error::UserWarning")      # Pillow's warning would be a second stderr line
def test_a_slide_cut_before_its_first_directory_is_named_truncated(data_dir, tmp_path):
    real = data_dir / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"     # Aperio writes its directories after the pixels
    head = tmp_path / "head.svs"
    head.write_bytes(real.read_bytes()[:300_000])
    model = stain_model(tmp_path / "repository")
    fails_cleanly(tmp_path, [head, "--model", model, "--output", tmp_path / "l.tif", "--mpp", "0.5"],
                  "head.svs is truncated or damaged: its TIFF directory reaches past the end of the file",
                  "copy the file again")


def test_a_slide_whose_file_says_its_pixels_are_not_square_runs_once_mpp_replaces_that(case, tmp_path):
    import tifffile

    folder, image, slide, model = case
    skewed = tmp_path / "skewed.tif"
    tifffile.imwrite(skewed, image, tile=(256, 256), photometric="rgb", resolution=(20000, 16000),
                     resolutionunit="CENTIMETER")                   # 0.5 by 0.625 microns a pixel
    fails_cleanly(tmp_path, [skewed, "--model", model, "--output", tmp_path / "l.tif"],
                  "its pixels are not square", "give level 0's microns per pixel with --mpp, which replaces it")
    result = CliRunner().invoke(main, ["predict", str(skewed), "--model", str(model), "--output",
                                       str(tmp_path / "l.tif"), "--mpp", "0.5", "--quiet"])
    assert result.exit_code == 0, result.output


def test_a_slide_with_no_tissue(case, tmp_path):
    folder, image, slide, model = case
    glass = np.full((600, 900, 3), 240, np.uint8) + np.random.default_rng(1).integers(0, 6, (600, 900, 3),
                                                                                          dtype=np.uint8)
    empty = write_slide(tmp_path / "glass.tif", glass, mpp=0.5, levels=2)
    fails_cleanly(tmp_path, [empty, "--model", model, "--output", tmp_path / "l.tif"], "no tissue found",
                  "--tissue-mask")


def test_a_model_finer_than_level_0(case, tmp_path):
    folder, image, slide, model = case
    fine = stain_model(tmp_path / "repository", mpp=0.25)
    fails_cleanly(tmp_path, [slide, "--model", fine, "--output", tmp_path / "l.tif"],
                  "works at 0.25 microns per pixel, finer than the slide's level 0 (0.5 microns per pixel, the "
                  "file's openslide.mpp-x; where that is wrong (a 72 dpi placeholder), give --mpp)")
    fails_cleanly(tmp_path, [slide, "--model", fine, "--mpp", "0.28", "--output", tmp_path / "l.tif"],
                  "(0.28 microns per pixel, given with --mpp) by more than 10%")


def test_a_plain_tiff_is_told_its_resolution_tags_are_not_read(case, tmp_path):
    folder, image, slide, model = case
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image, photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    fails_cleanly(tmp_path, [plain, "--model", model, "--output", tmp_path / "l.tif"], "plain.tif is a plain image "
                  "(read whole through Pillow, not tiled), whose resolution tags or dpi are not read; give the "
                  "microns per pixel of its level 0 with --mpp")


def test_a_wrong_or_absurd_mpp(case, tmp_path):
    folder, image, slide, model = case
    fails_cleanly(tmp_path, [slide, slide, "--model", model, "--mpp", "0.5", "--output", tmp_path / "l.tif"],
                  "--mpp is for whole-slide images", "2 inputs are read as one scan's channels, and a run takes "
                  "one slide (many slides: --csv")
    fails_cleanly(tmp_path, [slide, "--model", model, "--mpp", "0", "--output", tmp_path / "l.tif"], "--mpp")
    fails_cleanly(tmp_path, [slide, "--model", model, "--mpp", "nan", "--output", tmp_path / "l.tif"], "--mpp")
    fails_cleanly(tmp_path, [slide, "--model", model, "--mpp", "0.02", "--output", tmp_path / "l.tif"],
                  "the whole slide measures 24 x 16 microns at 0.02 um/pixel: if that is not its size, give its true "
                  "resolution with --mpp")


def test_a_tissue_mask_of_the_wrong_shape_or_empty(case, tmp_path):
    folder, image, slide, model = case
    wrong = tmp_path / "wrong.png"
    Image.fromarray(np.full((100, 100), 255, np.uint8)).save(wrong)
    fails_cleanly(tmp_path, [slide, "--model", model, "--tissue-mask", wrong, "--output", tmp_path / "l.tif"],
                  "aspect ratio")
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((80, 120), np.uint8)).save(empty)
    fails_cleanly(tmp_path, [slide, "--model", model, "--tissue-mask", empty, "--output", tmp_path / "l.tif"],
                  "the mask is empty")


def test_a_given_tissue_mask_decides_which_windows_run(case, tmp_path):
    from click.testing import CliRunner

    from runtime.commands.cli import main

    folder, image, slide, model = case
    corner = np.zeros((80, 120), np.uint8)
    corner[:10, :10] = 255
    mask = tmp_path / "corner.png"
    Image.fromarray(corner).save(mask)
    result = CliRunner().invoke(main, ["predict", str(slide), "--model", str(model), "--tissue-mask", str(mask),
                                       "--output", str(tmp_path / "l.tif"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "windows: 1 run" in result.output
    layer = np.zeros((80, 120, 4), np.uint8)                 # drawn over the slide: black on transparent glass
    layer[:10, :10, 3] = 255
    layer[10:, 10:, :3] = 255
    Image.fromarray(layer).save(mask)
    result = CliRunner().invoke(main, ["predict", str(slide), "--model", str(model), "--tissue-mask", str(mask),
                                       "--output", str(tmp_path / "layer.tif"), "--quiet"])
    assert result.exit_code == 0 and "windows: 1 run" in result.output, result.output
    layer[:10, :10, :3] = (1, 1, 1)                          # shades at a drawn region's edge are its own
    layer[0, 0, :3] = (200, 30, 30)
    Image.fromarray(layer).save(tmp_path / "shaded.png")
    palette = Image.fromarray((corner > 0).astype(np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    void = np.asarray(palette).copy()
    void[-1, -1] = 255                                        # one pixel of a transparent "void" index
    masks = {"shaded.png": (Image.open(tmp_path / "shaded.png"), {}), "unused.png": (palette, {"transparency": 7}),
             "void.png": (Image.fromarray(void, mode="P"), {"transparency": 255})}
    masks["void.png"][0].putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    for name, (picture, options) in masks.items():
        picture.save(tmp_path / name, **options)
        result = CliRunner().invoke(main, ["predict", str(slide), "--model", str(model), "--tissue-mask",
                                           str(tmp_path / name), "--output", str(tmp_path / "l.tif"), "--quiet"])
        assert result.exit_code == 0 and "windows: 1 run" in result.output, (name, result.output)


def test_a_coloured_tissue_mask_without_transparency_is_refused(case, tmp_path):
    """A thumbnail or an overlay given as the mask would read as tissue everywhere."""
    folder, image, slide, model = case
    thumbnail = tmp_path / "thumbnail.png"
    Image.fromarray(np.asarray(Image.fromarray(image).resize((120, 80)))).save(thumbnail)
    fails_cleanly(tmp_path, [slide, "--model", model, "--tissue-mask", thumbnail, "--output", tmp_path / "l.tif"],
                  "--tissue-mask", "its pixels are coloured (RGB) and none is transparent",
                  "non-zero where the tissue is")


def test_a_radiology_model_given_a_slide_and_a_slide_model_given_a_volume(case, tmp_path):
    folder, image, slide, model = case
    radiology = bright_model(tmp_path / "repository")
    svs = tmp_path / "slide.svs"
    svs.write_bytes(slide.read_bytes())
    fails_cleanly(tmp_path, [svs, "--model", radiology, "--output", tmp_path / "l.tif"], "radiology model",
                  "histology")
    fails_cleanly(tmp_path, [slide, "--model", radiology, "--output", tmp_path / "l.nii.gz"],  # a .tif, read as a scan
                  f"{slide} is a whole-slide image (a tiled TIFF pyramid of", "radiology model; run a histology model")
    volume = write_scan(tmp_path / "scan.nii.gz", np.ones((10, 20, 20), np.float32))
    fails_cleanly(tmp_path, [volume, "--model", model, "--output", tmp_path / "l.nii.gz"], "histology model",
                  "scan.nii.gz")


def test_slide_options_on_a_scan_and_scan_outputs_for_a_slide(case, tmp_path):
    folder, image, slide, model = case
    radiology = bright_model(tmp_path / "repository")
    volume = write_scan(tmp_path / "scan.nii.gz", np.ones((10, 20, 20), np.float32))
    fails_cleanly(tmp_path, [volume, "--model", radiology, "--output", tmp_path / "l.nii.gz",
                             "--overlay", tmp_path / "o.png"], "--overlay", "whole-slide")
    fails_cleanly(tmp_path, [slide, "--model", model, "--output", tmp_path / "l.nii.gz"],
                  "--output", "l.nii.gz must end with one of .tif, .tiff")
    fails_cleanly(tmp_path, [slide, "--model", model], "--output")
    for option, name, allowed in [("--overlay", "o.tif", "must end with .png."),
                                  ("--geojson", "r.txt", "must end with one of .geojson, .json."),
                                  ("--probabilities", "p.png", "must end with one of .tif")]:
        fails_cleanly(tmp_path, [slide, "--model", model, option, tmp_path / name], f"{option} ", allowed)


def test_a_failed_run_leaves_an_earlier_good_output_intact(case, tmp_path):
    from click.testing import CliRunner

    from runtime.commands.cli import main

    folder, image, slide, model = case
    labels = tmp_path / "labels.tif"
    result = CliRunner().invoke(main, ["predict", str(slide), "--model", str(model), "--output", str(labels),
                                       "--quiet"])
    assert result.exit_code == 0, result.output
    fine = stain_model(tmp_path / "repository", mpp=0.25)
    fails_cleanly(tmp_path, [slide, "--model", fine, "--output", labels], "finer")


def test_the_slide_is_never_an_output(case, tmp_path):
    folder, image, slide, model = case
    fails_cleanly(folder, [slide, "--model", model, "--output", slide], "never overwritten")


def test_a_grid_of_more_windows_than_the_bound_is_refused_before_it_is_laid(case):
    from runtime.manifest import load_manifest
    from runtime.slide.predict import MAX_WINDOWS, _grid
    from runtime.slide.source import Sampling

    folder, image, slide, model = case
    manifest, _ = load_manifest(model)
    huge = Sampling(l0_per_pixel=1.0, level=0, shape=(400_000, 400_000))
    with pytest.raises(InputError, match=f"more than {MAX_WINDOWS:,}"):
        _grid(manifest, huge)


def test_a_slide_with_no_glass_is_tissue_wherever_it_is_not_near_white(tmp_path):
    import warnings

    from runtime.slide.reader import Slide
    from runtime.slide.tissue import otsu_mask

    rng = np.random.default_rng(3)
    pink = np.clip(np.array([200, 120, 170]) + rng.integers(-40, 40, (400, 600, 3)), 0, 255).astype(np.uint8)
    path = write_slide(tmp_path / "all_tissue.tif", pink, mpp=0.5, levels=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Slide(path) as slide:
            mask = otsu_mask(slide, 4.0, 0.0, 0.0)
    assert mask.share == 1.0


def png_header_only(path, width, height):
    """A PNG that claims width x height pixels and holds almost no data."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_huge_or_hollow_plain_images_are_one_error_line(case, tmp_path):
    folder, image, slide, model = case
    bomb = png_header_only(tmp_path / "bomb.png", 15000, 15000)       # past Pillow's own bomb limit
    fails_cleanly(tmp_path, [bomb, "--model", model, "--output", tmp_path / "l.tif"], "bomb.png", "does not decode")
    giant = png_header_only(tmp_path / "giant.png", 30000, 30000)
    fails_cleanly(tmp_path, [giant, "--model", model, "--output", tmp_path / "l.tif"], "at most 400,000,000")
    fails_cleanly(tmp_path, [slide, "--model", model, "--tissue-mask", png_header_only(tmp_path / "m.png", 18000, 12000),
                             "--output", tmp_path / "l.tif"], "--tissue-mask", "does not decode")


def test_a_plain_image_is_held_to_the_memory_budget_before_it_is_decoded(case, tmp_path, monkeypatch):
    folder, image, slide, model = case
    plain = tmp_path / "plain.png"
    Image.fromarray(image).save(plain)                                      # 1200 x 800, about 9.6 MB decoded whole
    monkeypatch.setenv("MEDFLOW_MAX_MEMORY", "5M")
    fails_cleanly(tmp_path, [plain, "--model", model, "--mpp", "0.5", "--output", tmp_path / "l.tif"],
                  f"decoding slide {plain} (1200 x 800 pixels, read whole) needs about 9.6 MB, more than the memory "
                  "budget", "save it as a tiled pyramidal TIFF")
    fails_cleanly(tmp_path, [slide, "--model", model, "--tissue-mask", plain, "--output", tmp_path / "l.tif"],
                  f"decoding --tissue-mask {plain}", "save it smaller (any one scale of the whole slide is read)")


def test_mpp_replaces_a_file_resolution_that_is_not_square(case, tmp_path):
    import tifffile
    from click.testing import CliRunner

    from runtime.commands.cli import main

    folder, image, slide, model = case
    odd = tmp_path / "odd.tif"
    tifffile.imwrite(odd, image, tile=(256, 256), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.7),
                     resolutionunit="CENTIMETER")
    fails_cleanly(tmp_path, [odd, "--model", model, "--output", tmp_path / "l.tif"], "not square")
    result = CliRunner().invoke(main, ["predict", str(odd), "--model", str(model), "--mpp", "0.5", "--quiet",
                                       "--output", str(tmp_path / "l.tif")])
    assert result.exit_code == 0, result.output


def test_a_window_read_far_finer_than_the_model_is_refused(case, tmp_path):
    folder, image, slide, model = case
    flat = write_slide(tmp_path / "flat.tif", image, mpp=0.5, levels=1)
    coarse = stain_model(tmp_path / "repository", mpp=8.0, patch=64)     # 160 level-0 pixels per model pixel
    fails_cleanly(tmp_path, [flat, "--model", coarse, "--mpp", "0.05", "--tissue-mask", slide_mask(tmp_path),
                             "--output", tmp_path / "l.tif"], "read as 10240 pixels a side", "more than 8192")


def slide_mask(folder):
    path = folder / "all.png"
    Image.fromarray(np.full((80, 120), 255, np.uint8)).save(path)
    return path


def test_a_csv_run_never_writes_over_its_own_csv(case, tmp_path):
    folder, image, slide, model = case
    out = tmp_path / "out"
    out.mkdir()
    table = out / "slides.csv"
    table.write_text(f"subject_id,slide\na,{slide}\n")
    fails_cleanly(out, ["--csv", table, "--output-dir", out, "--model", model], "slides table", "never overwritten")


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_mid_run_removes_the_scratch_map_and_the_staged_outputs(tmp_path, stop):
    import signal
    import subprocess
    import sys
    import time

    image, _ = tissue_image(2400, 3600)
    slide = write_slide(tmp_path / "slide.tif", image, mpp=0.5)
    model = stain_model(tmp_path / "repository", mpp=0.5, patch=64, batch_size=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.tif").write_bytes(b"an earlier output")
    command = [sys.executable, "-u", "-c", "from runtime.commands.cli import main; main()", "predict", str(slide),
               "--model", str(model), "--output", str(out / "keep.tif"), "--geojson", str(out / "regions.geojson"),
               "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        while "tissue:" not in seen:                        # the windows start after this line
            line = process.stdout.readline()
            assert line, process.stderr.read()
            seen += line
        time.sleep(0.5)
        assert [p.name for p in out.iterdir() if p.name.startswith(".medflow-slide-")], "no scratch map while running"
        process.send_signal(getattr(signal, stop))
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    number = getattr(signal, stop).value
    assert process.returncode == 128 + number, stderr
    named = "SIGINT (Ctrl-C)" if stop == "SIGINT" else stop
    assert [line for line in stderr.splitlines() if line.strip()] == [
        f"error: stopped by {named} before the command finished"]
    assert sorted(p.name for p in out.iterdir()) == ["keep.tif"]
    assert (out / "keep.tif").read_bytes() == b"an earlier output"


def test_a_grey_image_given_as_a_slide_is_warned_of_once(case, tmp_path, caplog):
    """A label map or a mask given as the slide reads as all tissue: it runs, and says it is grey,
    a plain image or a tiled TIFF (the runtime's own label map)."""
    import logging

    folder, image, slide, model = case
    Image.fromarray(image.mean(axis=2).astype(np.uint8)).save(tmp_path / "grey.png")
    with caplog.at_level(logging.WARNING, logger="runtime.slide.reader"):
        result = CliRunner().invoke(main, ["predict", str(tmp_path / "grey.png"), "--model", str(model), "--mpp",
                                           "0.5", "--output", str(tmp_path / "l.tif")])
    assert result.exit_code == 0, result.output
    warned = [r.getMessage() for r in caplog.records if "is a grey image" in r.getMessage()]
    assert len(warned) == 1 and "Pillow mode L" in warned[0] and "is it a label map or a mask?" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="runtime.slide.reader"):
        Image.fromarray(image).save(tmp_path / "colour.png")
        assert CliRunner().invoke(main, ["predict", str(tmp_path / "colour.png"), "--model", str(model), "--mpp",
                                         "0.5", "--output", str(tmp_path / "c.tif")]).exit_code == 0
    assert not [r for r in caplog.records if "grey image" in r.getMessage()]
    with caplog.at_level(logging.WARNING, logger="runtime.slide.reader"):       # the map just written, as a slide
        again = CliRunner().invoke(main, ["predict", str(tmp_path / "c.tif"), "--model", str(model), "--output",
                                          str(tmp_path / "again.tif")])
    assert again.exit_code == 0, again.output
    warned = [r.getMessage() for r in caplog.records if "is a grey image" in r.getMessage()]
    assert len(warned) == 1 and "c.tif is a grey image (one channel, a TIFF of one sample per pixel)" in warned[0]


def test_a_truncated_tiff_given_to_a_radiology_model_is_one_error_line(case, tmp_path):
    """Asked whether it is a pyramid, tifffile logs what it cannot read; the scan reader then names
    the damage, in the one line on stderr."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    folder, image, slide, model = case
    cut = tmp_path / "cut.tif"
    cut.write_bytes(slide.read_bytes()[:3000])
    model = bright_model(tmp_path / "repository")
    done = subprocess.run([sys.executable, "-m", "runtime.commands.cli", "predict", str(cut), "--model", str(model),
                           "--output", str(tmp_path / "l.nii.gz"), "--quiet"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and "cut.tif" in lines[0], \
        done.stderr
    assert not (tmp_path / "l.nii.gz").exists()
