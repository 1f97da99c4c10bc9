"""Whole-slide prediction end to end: a synthetic pyramidal slide and the real TCGA slide through
`runtime predict`, against a direct computation of the same per-pixel model."""
from __future__ import annotations

import json

import numpy as np
import openslide
import pytest
import shapely
import tifffile
from click.testing import CliRunner

from runtime.commands.cli import main
from runtime.predict import load_model
from runtime.slide.predict import predict_slide
from runtime.window import ChunkedMerger
from tests.slidekit import stain_logits, stain_model, tissue_image, write_slide

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A 1600 x 2400 slide at 0.5 um/pixel (3 levels), its truth, and the stain model at 1 um/pixel."""
    folder = tmp_path_factory.mktemp("slide")
    image, truth = tissue_image(1600, 2400)
    slide = write_slide(folder / "slide.tif", image, mpp=0.5)
    model = stain_model(folder / "repository", mpp=1.0, patch=128)
    return folder, image, truth, slide, model


def predict(*args: str) -> str:
    result = CliRunner().invoke(main, ["predict", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=0))
    return shifted / shifted.sum(axis=0)


def test_the_stitched_map_equals_the_model_on_the_whole_image(case, tmp_path):
    folder, image, truth, slide, model = case
    labels, probabilities = tmp_path / "labels.tiff", tmp_path / "probabilities.tiff"
    output = predict(slide, "--model", model, "--output", labels, "--probabilities", probabilities)
    assert "windows:" in output and "skipped as background" in output
    direct = stain_logits(image[::2, ::2])          # level 1 is the model's 1 um/pixel
    got = tifffile.imread(labels)
    assert got.shape == direct.shape[1:]
    assert np.mean(got == direct.argmax(axis=0)) >= 0.999
    assert np.mean(got == truth[::2, ::2]) >= 0.999
    stored = tifffile.imread(probabilities).astype(np.float32) / 255
    tissue = truth[::2, ::2] > 0
    expected = np.moveaxis(softmax(direct), 0, -1)
    assert np.abs(stored[tissue] - expected[tissue]).max() <= 0.5 / 255 + 1e-5
    described = {path: openslide.OpenSlide(str(path)).properties["tiff.ImageDescription"]
                 for path in (labels, probabilities)}
    assert json.loads(described[labels])["classes"] == {"0": "background", "1": "nuclei", "2": "stroma"}
    assert json.loads(described[probabilities])["classes"] == ["background", "nuclei", "stroma"]
    made_by = {key: json.loads(described[labels])[key] for key in ("model", "version", "slide", "mpp")}
    assert made_by == {"model": "stain", "version": 1, "slide": slide.name, "mpp": 1.0}


def test_the_label_map_reopens_in_openslide_at_its_size_and_resolution_in_the_overlays_colours(case, tmp_path):
    """The class values stay the pixels' (tifffile, Pillow read them); OpenSlide, as a viewer,
    shows each class in its overlay colour through the pages' colour map."""
    from PIL import Image

    from runtime.slide.outputs import default_colors

    folder, image, truth, slide, model = case
    labels = tmp_path / "labels.tif"
    predict(slide, "--model", model, "--output", labels)
    opened = openslide.OpenSlide(str(labels))
    assert opened.level_dimensions[0] == (1200, 800)
    assert float(opened.properties["openslide.mpp-x"]) == pytest.approx(1.0)
    assert len(opened.level_dimensions) >= 2
    values = tifffile.imread(labels)
    assert set(np.unique(values)) == {0, 1, 2}
    with tifffile.TiffFile(labels) as tiff:
        assert np.array_equal(tiff.pages[1].asarray(), values[::2, ::2])
    shown = np.asarray(opened.read_region((0, 0), 1, opened.level_dimensions[1]).convert("RGB"))
    assert np.array_equal(shown, np.asarray(default_colors(3), np.uint8)[values[::2, ::2]])
    with Image.open(labels) as read:
        assert read.mode == "P" and np.array_equal(np.asarray(read), values)


def test_the_geojson_polygons_lie_inside_the_slide_and_name_the_classes(case, tmp_path):
    folder, image, truth, slide, model = case
    regions = tmp_path / "regions.geojson"
    overlay = tmp_path / "overlay.png"
    said = predict(slide, "--model", model, "--geojson", regions, "--overlay", overlay)
    data = json.loads(regions.read_text())
    assert data["medflow"] == {"model": "stain", "version": 1, "slide": slide.name, "mpp": 1.0}
    assert "regions: " in said and "left out" not in said          # no region of the map is that small
    names = {f["properties"]["classification"]["name"] for f in data["features"]}
    assert names == {"nuclei", "stroma"}
    polygons = [polygon for f in data["features"] for polygon in (
        [f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon" else f["geometry"]["coordinates"])]
    points = np.array([p for polygon in polygons for ring in polygon for p in ring])
    assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in data["features"])
    assert points.min() >= 0 and points[:, 0].max() <= 2400 and points[:, 1].max() <= 1600
    stroma = [f for f in data["features"] if f["properties"]["classification"]["name"] == "stroma"]
    assert len(stroma) == 1 and len(stroma[0]["geometry"]["coordinates"]) > 1   # the nuclei are its holes
    from PIL import Image

    with Image.open(overlay) as picture:
        assert picture.size == (1200, 800)


def test_a_map_larger_than_the_memory_limit_is_stitched_on_disk_to_the_same_result(case, tmp_path):
    folder, image, truth, slide, model = case
    loaded = load_model(model, device="cpu")
    small, scratch_small = predict_slide(loaded, slide, work_dir=tmp_path, max_bytes=2 * 2**20)
    large, scratch_large = predict_slide(loaded, slide, work_dir=tmp_path)
    whole = (slice(0, 800), slice(0, 1200))
    map_bytes = 4 * 4 * 800 * 1200                  # three class sums and the weights, float32
    assert map_bytes > 2 * 2**20
    assert np.array_equal(small.array.read(whole), large.array.read(whole))
    assert np.array_equal(small.labels(whole), truth[::2, ::2])
    tissue = truth[::2, ::2] > 0                     # every tissue pixel lies in windows that ran
    expected = softmax(stain_logits(image[::2, ::2]))
    assert np.abs(small.probabilities(whole)[:, tissue] - expected[:, tissue]).max() <= 1e-5
    alone, scratch_alone = predict_slide(loaded, slide, work_dir=tmp_path, probabilities=False)
    assert alone.array is None and not list(scratch_alone.rglob("result-*"))
    assert np.array_equal(alone.labels(whole), small.labels(whole))


def test_the_slide_source_reads_the_same_batches_ahead_and_when_asked(case):
    from concurrent.futures import ThreadPoolExecutor

    from runtime.slide.predict import plan_slide
    from runtime.slide.reader import Slide
    from runtime.slide.source import SlideSource

    folder, image, truth, slide_path, model = case
    manifest = load_model(model, device="cpu").manifest
    slide = Slide(slide_path)
    sampling, _, planned = plan_slide(manifest, slide)
    ahead = SlideSource(slide, sampling, planned, manifest.preprocessing)
    asked = SlideSource(slide, sampling, planned, manifest.preprocessing, read_ahead=False)
    calls = []
    with ThreadPoolExecutor(2) as pool:
        def share(work, items):
            items = list(items)
            calls.append(len(items))
            list(pool.map(work, items))

        try:
            for step in planned.passes:
                np.testing.assert_array_equal(asked.gather(step, None, share, 2), ahead.gather(step))
        finally:
            ahead.close()
            asked.close()
            slide.close()
    assert calls == [len(step.windows) for step in planned.passes if step.first] and len(calls) > 3


@pytest.mark.parametrize("activation,rule", [("softmax", "argmax"), ("none", "argmax"), ("sigmoid", "argmax"),
                                             ("softmax", "threshold"), ("sigmoid", "threshold")])
@pytest.mark.parametrize("values", [(0, 1, 2), (0, 7, 300)])
def test_the_chunk_labels_are_the_label_rule_on_the_whole_blend(case, tmp_path, activation, rule, values):
    import dataclasses

    from runtime.postprocess import activate, background_raw, expected_channels, label_map
    from runtime.slide.predict import label_product
    from runtime.window import MemoryMerger, plan
    from tests.windowkit import spec

    manifest = load_model(case[4], device="cpu").manifest
    manifest = dataclasses.replace(
        manifest, classes=tuple(dataclasses.replace(c, value=v) for c, v in zip(manifest.classes, values)),
        output=dataclasses.replace(manifest.output, activation=activation, label_rule=rule, threshold=0.5))
    foreground = np.zeros((70, 90), bool)
    foreground[5:40, 10:60] = True
    planned = plan((70, 90), spec((8, 8), skip_empty=True, batch_size=3), foreground)
    background = background_raw(manifest)
    chunked = ChunkedMerger(planned, tmp_path / "map", 2**20, (16, 16), background=background,
                            products=[label_product(manifest)], keep_blend=False)
    in_memory = MemoryMerger(planned)
    rng = np.random.default_rng(0)
    for step in planned.passes:
        output = 3 * rng.normal(size=(len(step.windows), expected_channels(manifest), 8, 8)).astype(np.float32)
        chunked.take(step, chunked.check(output, len(step.windows)))
        in_memory.take(step, in_memory.check(output.copy(), len(step.windows)))
    assert chunked.finish() is None
    got = np.asarray(chunked.product("labels"))[0]
    expected = label_map(activate(in_memory.finish(background), activation), manifest)
    assert got.dtype == expected.dtype == (np.uint16 if max(values) > 255 else np.uint8)
    assert np.mean(got == expected) >= 0.9999 and set(np.unique(got)) <= set(values)


def test_a_slide_without_resolution_needs_mpp_and_runs_with_it(case, tmp_path):
    folder, image, truth, slide, model = case
    bare = write_slide(tmp_path / "bare.tif", image, mpp=None)
    labels = tmp_path / "labels.tif"
    result = CliRunner().invoke(main, ["predict", str(bare), "--model", str(model), "--output", str(labels)])
    assert result.exit_code == 1 and "--mpp" in result.output and not labels.exists()
    predict(bare, "--model", model, "--output", labels, "--mpp", "0.5")
    assert np.mean(tifffile.imread(labels) == truth[::2, ::2]) >= 0.999


def test_a_model_a_little_finer_than_a_level_reads_it_resized_up(case, tmp_path):
    """A scanner's 0.2527 um/pixel for a model's 0.25: level 0 resized up, not refused; a model
    a little finer than level 1 reads level 1, not level 0's four times the pixels."""
    folder, image, truth, slide, model = case
    labels = tmp_path / "labels.tif"
    output = predict(slide, "--model", stain_model(tmp_path / "a", mpp=0.48), "--output", labels)
    assert "the model's 0.48 um/pixel are read from level 0 (0.5 um/pixel), resized up by 4.0%" in output
    assert tifffile.imread(labels).shape == (1667, 2500)
    output = predict(slide, "--model", model, "--mpp", "0.5054", "--output", labels)     # level 1 at 1.0108
    assert "the model's 1 um/pixel are read from level 1 (1.011 um/pixel), resized up by 1.1%" in output
    output = predict(slide, "--model", stain_model(tmp_path / "b", mpp=0.95), "--output", tmp_path / "b.tif")
    assert "the model's 0.95 um/pixel are read from level 0 (0.5 um/pixel)" in output      # level 1 is 5 % coarser
    got, scale = tifffile.imread(labels), 1 / 0.5054
    assert got.shape == (809, 1213)
    centres = [np.minimum(((np.arange(n) + 0.5) * scale).astype(int), side - 1)
               for n, side in zip(got.shape, truth.shape)]
    assert np.mean(got == truth[np.ix_(*centres)]) >= 0.99


def test_a_model_coarser_than_the_levels_reads_the_best_level_and_resizes(case, tmp_path):
    folder, image, truth, slide, model = case
    coarse = stain_model(tmp_path / "repository", mpp=1.5, patch=96)
    labels = tmp_path / "labels.tif"
    output = predict(slide, "--model", coarse, "--output", labels)
    assert "the model's 1.5 um/pixel are read from level 1 (1 um/pixel)" in output
    got = tifffile.imread(labels)
    assert got.shape == (534, 800)
    from PIL import Image

    expected = np.asarray(Image.fromarray(truth).resize((800, 534), Image.Resampling.NEAREST))
    assert np.mean(got == expected) >= 0.97          # only the resized edges differ


@pytest.mark.parametrize(("glass", "pale"), [((242, 242, 242), (228, 165, 200)),      # pink stroma
                                             ((240, 238, 222), (205, 205, 218))])     # pale haematoxylin, tinted glass
def test_pale_tissue_beside_dark_tissue_is_tissue_and_the_glass_is_not(tmp_path, glass, pale):
    """Three brightness levels, dark nuclei-rich tissue, pale tissue and glass: Otsu's threshold
    alone falls between the two tissues; the mask keeps both and leaves the glass out, whether the
    glass is neutral or tinted."""
    from runtime.slide.reader import Slide
    from runtime.slide.tissue import otsu_mask

    rng = np.random.default_rng(5)
    rgb = np.clip(np.array(glass) + rng.normal(0, 3, (1200, 1600, 3)), 0, 255)
    rgb[100:700, 100:1500] = np.array(pale) + rng.normal(0, 6, (600, 1400, 3))
    rows, columns = np.ogrid[:1200, :1600]
    disc = (rows - 900) ** 2 + (columns - 800) ** 2 < 200 ** 2
    rgb[disc] = np.array([90, 60, 140]) + rng.normal(0, 8, (int(disc.sum()), 3))                 # dark nuclei
    truth = disc.copy()
    truth[100:700, 100:1500] = True
    path = write_slide(tmp_path / "pale.tif", np.clip(rgb, 0, 255).astype(np.uint8), mpp=0.5, levels=3)
    with Slide(path) as slide:
        mask = otsu_mask(slide, 4.0, 0.0, 0.0)
    l0 = np.kron(mask.mask, np.ones((8, 8), dtype=bool))[:1200, :1600]
    assert np.mean(l0 == truth) > 0.98, (mask.share, truth.mean())
    assert 0.5 < mask.share < 0.6


@pytest.mark.parametrize("glass", ["grey glass beside white fill", "glass lit two ways"])
def test_glass_of_two_brightnesses_stays_glass(tmp_path, glass):
    """The bright class splits in two here too, but neither half is coloured: no pale tissue."""
    from runtime.slide.reader import Slide
    from runtime.slide.tissue import otsu_mask

    rng = np.random.default_rng(0)
    rows, columns = np.ogrid[:1200, :1600]
    tissue = (rows - 600) ** 2 / 300 ** 2 + (columns - 700) ** 2 / 400 ** 2 < 1
    if glass == "grey glass beside white fill":
        rgb = 222 + rng.normal(0, 3, (1200, 1600, 3))
        rgb[:, 1150:] = 255                                               # an unscanned area's fill
    else:
        rgb = 245 + rng.normal(0, 3, (1200, 1600, 3))
        rgb[:, :800] = 215 + rng.normal(0, 3, (1200, 800, 3))
    rgb[tissue] = np.array([180, 100, 155]) + rng.normal(0, 8, (int(tissue.sum()), 3))
    path = write_slide(tmp_path / "glass.tif", np.clip(rgb, 0, 255).astype(np.uint8), mpp=0.5, levels=3)
    with Slide(path) as slide:
        mask = otsu_mask(slide, 4.0, 0.0, 0.0)
    l0 = np.kron(mask.mask, np.ones((8, 8), dtype=bool))[:1200, :1600]
    assert np.mean(l0 == tissue) > 0.99, mask.share


@pytest.mark.parametrize("size", [(1203, 1605), (1286, 1286)])
def test_tissue_at_the_right_and_bottom_edges_is_tissue(tmp_path, size):
    """The overview's last pixel of a row or column reaches past the slide: it is the slide's
    part alone, not paled by the white outside into glass. The same holds for a uniform slide."""
    from runtime.slide.reader import Slide
    from runtime.slide.tissue import otsu_mask

    rng = np.random.default_rng(0)
    height, width = size
    rgb = 240 + rng.normal(0, 3, (height, width, 3))
    rgb[:, width // 2:] = np.array([180, 100, 155]) + rng.normal(0, 8, (height, width - width // 2, 3))
    rgb[height // 2:] = np.array([180, 100, 155]) + rng.normal(0, 8, (height - height // 2, width, 3))
    path = write_slide(tmp_path / "edges.tif", np.clip(rgb, 0, 255).astype(np.uint8), mpp=0.5, levels=3)
    with Slide(path) as slide:
        mask = otsu_mask(slide, 8.0, 0.0, 0.0)
        assert mask.mask[:, -1].all() and mask.mask[-1].all()          # the right half and the bottom half
        assert not mask.mask[:mask.mask.shape[0] // 3, :mask.mask.shape[1] // 3].any()
    uniform = write_slide(tmp_path / "uniform.tif", np.full((height, width, 3), (180, 100, 155), np.uint8), mpp=0.5)
    with Slide(uniform) as slide:
        assert otsu_mask(slide, 8.0, 0.0, 0.0).share == 1.0


def test_a_binary_tile_classifier_of_one_sigmoid_channel_predicts_and_paints_by_its_threshold(case, tmp_path,
                                                                                                monkeypatch):
    import csv

    from export import graphs
    from runtime.slide import outputs
    from tests.slidekit import tile_classifier

    folder, image, truth, slide, model = case
    painted = []
    overlay_png = outputs.overlay_png
    monkeypatch.setattr(outputs, "overlay_png", lambda path, thumbnail, labels, colors, tissue, legend: (
        painted.append((labels.copy(), legend)), overlay_png(path, thumbnail, labels, colors, tissue=tissue,
                                                              legend=legend)))
    table = tmp_path / "tiles.csv"
    predict(slide, "--model", tile_classifier(tmp_path / "repository", "binary", threshold=0.01), "--output", table,
            "--overlay", tmp_path / "heatmap.png")                    # glass about 0.003, tissue 0.02 to 0.05
    rows = list(csv.DictReader(table.open()))
    assert list(rows[0])[4:] == ["predicted", "probability_tissue"]
    assert {(int(r["l0_x"]) % 256, int(r["l0_y"]) % 256) for r in rows} == {(0, 0)}   # trainer patches' grid
    half = image[::2, ::2].astype(np.float32) / 255
    weight, bias = graphs.classifier_weights(3, 1)
    for row in rows:
        x, y = int(row["l0_x"]) // 2, int(row["l0_y"]) // 2
        logit = float((weight @ half[y:y + 128, x:x + 128].reshape(-1, 3).mean(axis=0) + bias)[0])
        probability = 1 / (1 + np.exp(-logit))
        assert float(row["probability_tissue"]) == pytest.approx(probability, abs=1e-4)
        assert int(row["predicted"]) == int(probability > 0.01)
    assert {row["predicted"] for row in rows} == {"0", "1"}
    [(labels, legend)] = painted
    assert set(np.unique(labels)) - {0} == {int(row["predicted"]) + 1 for row in rows}
    assert legend == [("glass", (150, 150, 150)), ("tissue", outputs.default_colors(2)[1]),   # as an overlay
                      ("tissue mask (outline)", (0, 0, 0))]


def test_a_heatmap_of_targets_listed_out_of_order_paints_the_first_listed(case, tmp_path, monkeypatch):
    import csv

    from runtime.slide import outputs
    from tests.slidekit import tile_classifier

    folder, image, truth, slide, model = case
    legends = []
    overlay_png = outputs.overlay_png
    monkeypatch.setattr(outputs, "overlay_png", lambda path, thumbnail, labels, colors, tissue, legend: (
        legends.append(legend), overlay_png(path, thumbnail, labels, colors, tissue=tissue, legend=legend)))
    table = tmp_path / "tiles.csv"
    predict(slide, "--model", tile_classifier(tmp_path / "repository", "two targets"), "--output", table,
            "--overlay", tmp_path / "heatmap.png")
    rows = list(csv.DictReader(table.open()))
    second, first = (np.array([float(r[name]) for r in rows]) for name in ("second", "first"))
    assert np.abs(second - first).min() > 0.1
    [legend] = legends
    assert legend[0][0] == f"second {second.min():.4g} (lowest tenth)"
    assert legend[1][0] == f"second {second.max():.4g} (highest tenth)"


def test_the_real_slide_runs_and_its_tissue_mask_leaves_the_glass_out(data_dir, tmp_path):
    from runtime.slide.reader import Slide
    from runtime.slide.tissue import brightness, otsu_mask, overview

    svs = data_dir / "wsi" / "TCGA-CR-7395-01A-01-TS1.svs"
    with Slide(svs, mpp=0.5) as slide:
        mask = otsu_mask(slide, 8.0, 10000.0, 10000.0)
        rgb, _ = overview(slide, 8.0 / 0.5)
    grey = brightness(rgb)
    assert 0.3 < mask.share < 0.9
    assert grey[mask.mask].mean() < grey[~mask.mask].mean() - 40
    assert not mask.mask[:3, :3].any() and not mask.mask[-3:, -3:].any()
    model = stain_model(tmp_path / "repository", mpp=2.0, patch=128)
    labels, regions = tmp_path / "tcga.tif", tmp_path / "tcga.geojson"
    predict(svs, "--model", model, "--mpp", "0.5", "--output", labels, "--geojson", regions)
    opened = openslide.OpenSlide(str(labels))
    assert opened.level_dimensions[0] == (1111, 892)
    assert float(opened.properties["openslide.mpp-x"]) == pytest.approx(2.0)
    data = json.loads(regions.read_text())
    polygons = [polygon for f in data["features"] for polygon in (
        [f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon" else f["geometry"]["coordinates"])]
    points = np.array([p for polygon in polygons for ring in polygon for p in ring])
    assert all(shapely.geometry.shape(f["geometry"]).is_valid for f in data["features"])
    assert len(data["features"]) > 10
    assert points.min() >= 0 and points[:, 0].max() <= 4443 and points[:, 1].max() <= 3567


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_a_tile_model_writes_one_row_per_tissue_tile_and_a_heatmap(case, tmp_path, task):
    import csv

    from export import graphs
    from tests.slidekit import tile_classifier

    folder, image, truth, slide, model = case
    tiles_model = tile_classifier(tmp_path / "repository", task)
    table, heatmap = tmp_path / "tiles.csv", tmp_path / "heatmap.png"
    output = predict(slide, "--model", tiles_model, "--output", table, "--overlay", heatmap)
    rows = list(csv.DictReader(table.open()))
    assert f"tiles: {len(rows)} rows" in output and len(rows) > 4
    half = image[::2, ::2].astype(np.float32) / 255          # level 1, the model's 1 um/pixel
    for row in rows:
        x, y, w, h = (int(row[key]) // 2 for key in ("l0_x", "l0_y", "l0_width", "l0_height"))
        tile = half[y:y + h, x:x + w]
        assert (w, h) == (128, 128) and tile.shape[:2] == (128, 128)
        if task == "regression":
            assert float(row["red"]) == pytest.approx(tile[..., 0].mean(), abs=1e-4)
        else:
            weight, bias = graphs.classifier_weights(3, 2)
            logits = weight @ tile.reshape(-1, 3).mean(axis=0) + bias
            expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
            assert float(row["probability_tissue"]) == pytest.approx(expected[1], abs=1e-4)
            assert int(row["predicted"]) == int(np.argmax(expected))
    from PIL import Image

    with Image.open(heatmap) as picture:
        assert picture.size == (2048, 1366)                  # the thumbnail: at most 2048 pixels a side
    run_failing_args = ["predict", str(slide), "--model", str(tiles_model), "--geojson", str(tmp_path / "g.geojson")]
    result = CliRunner().invoke(main, run_failing_args)
    assert result.exit_code == 1 and "--geojson is for segmentation models" in result.output


def test_a_level_scaled_otherwise_along_x_than_y_is_not_read_and_the_map_stays_in_place(case, tmp_path, caplog):
    """OpenSlide gives a level one downsample, the mean of its two scales: read at 2.024, a level
    scaled 2.048 along x and 2.0 along y puts its pixels up to 14 of them off. Such a level is not
    read; a finer one is, and said so. Read from it, tissue agreed 0.959 with the truth. A level
    whose scales differ by the rounding of its size alone (a long, thin slide's) is read."""
    from PIL import Image

    folder, image, truth, slide, model = case
    coarse = stain_model(tmp_path / "repository", mpp=1.5, patch=96)      # level 1 (1.012 um) is the one to read
    uneven = tmp_path / "uneven.tif"
    level1 = np.asarray(Image.fromarray(image).resize((1172, 800), Image.Resampling.BILINEAR))
    with tifffile.TiffWriter(uneven) as writer:
        writer.write(image, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
        writer.write(level1, tile=(256, 256), photometric="rgb", subfiletype=1, resolution=(2e4 / 2.048, 2e4 / 2),
                     resolutionunit="CENTIMETER")
    labels = tmp_path / "labels.tif"
    result = CliRunner().invoke(main, ["predict", str(uneven), "--model", str(coarse), "--output", str(labels)])
    assert result.exit_code == 0, result.output
    assert "level 1 (1172 x 800) is scaled 2.048 along x and 2 along y, more than rounding" in caplog.text, caplog.text
    assert "read from level 0" in result.output
    expected = np.asarray(Image.fromarray(truth).resize((800, 534), Image.Resampling.NEAREST))
    agree = tifffile.imread(labels) == expected
    assert agree.mean() >= 0.995 and agree[expected > 0].mean() >= 0.99
    from runtime.slide.reader import Slide

    caplog.clear()
    thin = tmp_path / "thin.tif"                    # 403 / 4 rounded down: scales 4 and 4.03, rounding alone
    with tifffile.TiffWriter(thin) as writer:
        writer.write(image[:403], tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER")
        writer.write(np.ascontiguousarray(image[:400:4, ::4]), tile=(256, 256), photometric="rgb", subfiletype=1,
                     resolution=(2e4 / 4, 2e4 / 4), resolutionunit="CENTIMETER")
    with Slide(thin) as opened:
        assert [(level.width, level.height, level.uneven) for level in opened.levels] == [(2400, 403, False),
                                                                                         (600, 100, False)]
        assert opened.best_level(4.1) == 1
    assert "more than rounding its size explains" not in caplog.text
