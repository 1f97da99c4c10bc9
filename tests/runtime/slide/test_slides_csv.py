"""`runtime predict --csv` over several slides: outputs per slide, Dice against label images,
every CSV problem before any slide runs, and a failing slide reported after the others are written."""
from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from runtime.commands.cli import main
from tests.modelkit import bright_model, run_failing
from tests.slidekit import stain_model, tissue_image, write_slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slides_csv")
    for seed, name in enumerate(("a", "b")):
        image, truth = tissue_image(800, 1200, seed=seed)
        write_slide(folder / f"{name}.tif", image, mpp=None if name == "b" else 0.5, levels=2)
        Image.fromarray(truth[::4, ::4]).save(folder / f"{name}_truth.png")
    glass = np.full((600, 900, 3), 241, np.uint8)
    write_slide(folder / "glass.tif", glass, levels=2)
    return folder, stain_model(folder / "repository", mpp=1.0)


def write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_qupath_annotations_as_labels_give_the_dice_their_label_image_gives(slides, tmp_path):
    """The truth's regions traced to GeoJSON in level-0 pixels (4 per truth pixel) score as the truth does."""

    from runtime.slide.outputs import default_colors, geojson_regions

    folder, model = slides
    truth = np.asarray(Image.open(folder / "a_truth.png"))
    regions = geojson_regions(truth, (4.0, 4.0), ["background", "nuclei", "stroma"], default_colors(3), min_pixels=1)
    (folder / "a.geojson").write_text(json.dumps(regions))
    scores = {}
    for label in ("a_truth.png", "a.geojson"):
        table = write_csv(folder / "run.csv", [{"subject_id": "a", "slide": "a.tif", "label": label}])
        out = tmp_path / label.replace(".", "_")
        result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model",
                                           str(model), "--quiet"])
        assert result.exit_code == 0 and "warning" not in result.output, result.output
        scores[label] = next(csv.DictReader((out / "slides.csv").open()))
    for name in ("dice_nuclei", "dice_stroma"):
        assert float(scores["a.geojson"][name]) == pytest.approx(float(scores["a_truth.png"][name]), abs=0.01)
    shrunk = json.loads(json.dumps(regions))                  # as if in microns: a quarter of level-0 pixels
    for feature in shrunk["features"]:
        geometry = feature["geometry"]
        polygons = geometry["coordinates"] if geometry["type"] == "MultiPolygon" else [geometry["coordinates"]]
        for polygon in polygons:
            polygon[:] = [[[x / 4, y / 4] for x, y in ring] for ring in polygon]
    (folder / "shrunk.geojson").write_text(json.dumps(shrunk))
    table = write_csv(folder / "run.csv", [{"subject_id": "a", "slide": "a.tif", "label": "shrunk.geojson"}])
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(tmp_path / "shrunk"),
                                       "--model", str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "shrunk.geojson: only " in result.output and "of the annotated area lies on the slide's tissue; " \
        "annotations in microns" in result.output, result.output
    regions["features"][0]["properties"]["classification"]["name"] = "fat"
    (folder / "a.geojson").write_text(json.dumps(regions))
    table = write_csv(folder / "run.csv", [{"subject_id": "a", "slide": "a.tif", "label": "a.geojson"}])
    run_failing(["predict", "--csv", str(table), "--output-dir", str(tmp_path / "refused"), "--model", str(model)],
                "a.geojson: annotations of class(es) 'fat', which model stain's classes do(es) not name")
    assert not (tmp_path / "refused").exists()


def test_annotations_of_a_few_regions_score_those_regions_alone_where_the_model_records_an_ignore_value(
        slides, tmp_path):
    """A few boxes annotated on the truth's classes, the rest of the slide not: a model trained with
    data.ignore_value scores the boxes alone (near 1 for the stain model); one without counts the
    unannotated pixels as background and scores low."""
    from scipy import ndimage

    folder, model = slides
    truth = np.asarray(Image.open(folder / "a_truth.png"))              # 4 level-0 pixels per truth pixel
    features = []
    for value, name in ((1, "nuclei"), (2, "stroma")):
        ys, xs = np.nonzero(ndimage.binary_erosion(truth == value, np.ones((3, 3), bool)))
        for y, x in list(zip(ys, xs))[::max(1, len(ys) // 3)][:3]:
            x0, y0, x1, y1 = (int(v) for v in (4 * (x - 1) + 1, 4 * (y - 1) + 1, 4 * (x + 2) - 1, 4 * (y + 2) - 1))
            features.append({"type": "Feature", "properties": {"classification": {"name": name}},
                             "geometry": {"type": "Polygon",
                                          "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}})
    assert {f["properties"]["classification"]["name"] for f in features} == {"nuclei", "stroma"}
    (folder / "sparse.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    ignoring = stain_model(tmp_path / "repository", mpp=1.0, provenance={"label_ignore": 255})
    table = write_csv(folder / "run.csv", [{"subject_id": "a", "slide": "a.tif", "label": "sparse.geojson"}])
    scores = {}
    for name, version in (("ignoring", ignoring), ("dense", model)):
        result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(tmp_path / name),
                                           "--model", str(version), "--quiet"])
        assert result.exit_code == 0, result.output
        scores[name] = next(csv.DictReader((tmp_path / name / "slides.csv").open()))
        assert ("a label holding 255, the value of unannotated voxels" in result.output) is (name == "ignoring")
    for name in ("dice_nuclei", "dice_stroma"):
        assert float(scores["ignoring"][name]) >= 0.9 > 0.2 > float(scores["dense"][name]), scores
    ys, xs = np.nonzero(ndimage.binary_erosion(truth == 2, np.ones((9, 9), bool)))
    x0, y0 = int(4 * (xs[0] - 3)), int(4 * (ys[0] - 3))                  # stroma, wrongly annotated as nuclei
    wrong = [[x0, y0], [x0 + 24, y0], [x0 + 24, y0 + 24], [x0, y0 + 24], [x0, y0]]
    for carved in (False, True):
        extra = [{"type": "Feature", "properties": {"classification": {"name": name}},
                  "geometry": {"type": "Polygon", "coordinates": [wrong]}}
                 for name in (("nuclei", "Ignore*") if carved else ("nuclei",))]
        (folder / "carved.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features + extra}))
        table = write_csv(folder / "run.csv", [{"subject_id": "a", "slide": "a.tif", "label": "carved.geojson"}])
        out = tmp_path / f"carved_{carved}"
        result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model",
                                           str(ignoring), "--quiet"])
        assert result.exit_code == 0, result.output
        dice = float(next(csv.DictReader((out / "slides.csv").open()))["dice_nuclei"])
        assert (dice >= 0.9) is carved, dice                          # QuPath's Ignore* takes the box out again


def test_many_slides_with_labels_give_dice_per_class(slides, tmp_path, monkeypatch):
    """Named from another folder, relative to it: slides.csv names each slide by its absolute path."""
    folder, model = slides
    table = write_csv(folder / "run.csv", [
        {"subject_id": "a", "slide": "a.tif", "label": "a_truth.png", "mpp": ""},
        {"subject_id": "b", "slide": "b.tif", "label": "b_truth.png", "mpp": "0.5"},
    ])
    out = tmp_path / "preds"
    monkeypatch.chdir(folder.parent)
    result = CliRunner().invoke(main, ["predict", "--csv", str(table.relative_to(folder.parent)), "--output-dir",
                                       str(out), "--model", str(model), "--quiet", "--save-probabilities"])
    assert result.exit_code == 0, result.output
    assert "2 of 2 slide(s) predicted" in result.output
    assert re.search(r"^1/2 a: done in [0-9.]+ s$", result.output, re.M) and "2/2 b: done in" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}_{kind}" for name in ("a", "b") for kind in ("labels.tif", "overlay.png", "probabilities.tif",
                                                              "regions.geojson")] + ["slides.csv", "summary.csv"])
    labels = tifffile.imread(out / "a_labels.tif")
    probabilities = tifffile.imread(out / "a_probabilities.tif")
    assert probabilities.shape == (*labels.shape, 3)
    assert np.mean(np.argmax(probabilities, axis=-1) == labels) > 0.99
    regions = json.loads((out / "a_regions.geojson").read_text())
    named = {f["properties"]["classification"]["name"] for f in regions["features"]}
    assert named == {"nuclei", "stroma"}, named
    rows = list(csv.DictReader((out / "slides.csv").open()))
    assert [(r["subject_id"], r["slide"], r["output"]) for r in rows] == [
        (name, str((folder / f"{name}.tif").resolve()), f"{name}_labels.tif") for name in ("a", "b")]
    for row in rows:
        assert float(row["dice_nuclei"]) > 0.9 and float(row["dice_stroma"]) > 0.97
    summary = {r["metric"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(summary) == {"dice_nuclei", "dice_stroma"} and summary["dice_stroma"]["n"] == "2"


def test_a_tile_classifier_writes_each_slides_tiles_and_heatmap_and_no_probability_maps(slides, tmp_path):
    from tests.slidekit import tile_classifier

    folder, _ = slides
    model = tile_classifier(tmp_path / "repository")
    table = write_csv(folder / "tiles_run.csv", [{"subject_id": "a", "slide": "a.tif"}])
    out = tmp_path / "preds"
    run_failing(["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model),
                 "--save-probabilities"], "--save-probabilities writes a segmentation's probability maps",
                "whose <subject_id>_tiles.csv holds each tile's probabilities")
    assert not out.exists()
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model",
                                       str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["a_heatmap.png", "a_tiles.csv", "slides.csv"]
    rows = list(csv.DictReader((out / "a_tiles.csv").open()))
    assert list(rows[0]) == ["l0_x", "l0_y", "l0_width", "l0_height", "predicted", "probability_glass",
                             "probability_tissue"]
    assert next(csv.DictReader((out / "slides.csv").open()))["tiles"] == str(len(rows))


def test_a_tile_classifier_is_scored_on_the_tiles_annotations_or_a_slides_class_cover(slides, tmp_path):
    """A tile takes the annotated class covering more than half of it (three quarters: scored; half:
    not), or the class column's for every tile; the summary pools the tiles of every slide. A slide
    the model trained on, scored by its class alone, is warned of."""
    from runtime.manifest import subject_hash
    from tests.slidekit import tile_classifier

    folder, _ = slides
    model = tile_classifier(tmp_path / "repository",
                            provenance={"trained_on": {"salt": "s", "subjects": [subject_hash("s", "b")]}})
    plain = tmp_path / "plain"
    table = write_csv(folder / "tiles_plain.csv", [{"subject_id": "a", "slide": "a.tif"}])
    assert CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(plain), "--model",
                                     str(model), "--quiet"]).exit_code == 0
    tiles = list(csv.DictReader((plain / "a_tiles.csv").open()))
    (x1, y1, w1, h1), (x2, y2, w2, h2), (x3, y3, w3, h3), (x4, y4, w4, h4) = [
        [int(t[key]) for key in ("l0_x", "l0_y", "l0_width", "l0_height")] for t in tiles[:4]]

    def area(name, x0, y0, x1, y1):
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        return {"type": "Feature", "properties": {"classification": {"name": name}},
                "geometry": {"type": "Polygon", "coordinates": [ring]}}

    features = [area("tissue", x1, y1, x1 + w1, y1 + h1), area("glass", x2, y2, x2 + 3 * w2 // 4, y2 + h2),
                area("tissue", x3, y3, x3 + w3 // 2, y3 + h3), area("Ignore*", x4, y4, x4 + w4, y4 + h4),
                area("tissue", x4, y4, x4 + w4, y4 + h4)]   # QuPath's Ignore*, over a later class: the fourth has none
    (folder / "tiles.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    table = write_csv(folder / "tiles_run.csv", [{"subject_id": "a", "slide": "a.tif", "label": "tiles.geojson",
                                                  "class": "", "mpp": ""},
                                                 {"subject_id": "b", "slide": "b.tif", "label": "b_truth.png",
                                                  "class": "glass", "mpp": "0.5"}])   # the class wins, as in training
    out = tmp_path / "scored"
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model",
                                       str(model), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "1 of the 2 subject(s) scored (b) are among those model tiles_classification trained" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "a_heatmap.png", "a_tiles.csv", "b_heatmap.png", "b_tiles.csv", "confusion.csv", "slides.csv", "summary.csv"]
    a = list(csv.DictReader((out / "a_tiles.csv").open()))
    b = list(csv.DictReader((out / "b_tiles.csv").open()))
    assert [t["label"] for t in a] == ["1", "0"] + [""] * (len(a) - 2)
    assert {t["label"] for t in b} == {"0"}
    scored = a[:2] + b
    slides_table = {r["subject_id"]: r for r in csv.DictReader((out / "slides.csv").open())}
    assert slides_table["a"]["tiles_scored"] == "2" and slides_table["b"]["tiles_scored"] == str(len(b))
    for name, rows in (("a", a[:2]), ("b", b)):
        expected = np.mean([t["predicted"] == t["label"] for t in rows])
        assert float(slides_table[name]["accuracy"]) == pytest.approx(expected)
    summary = {r["metric"]: float(r["value"]) for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["n"] == len(scored)
    assert summary["accuracy"] == pytest.approx(np.mean([t["predicted"] == t["label"] for t in scored]))
    confusion = list(csv.DictReader((out / "confusion.csv").open()))
    assert sum(int(v) for r in confusion for k, v in r.items() if k != "true") == len(scored)

    wrong = write_csv(folder / "tiles_wrong.csv", [
        {"subject_id": "a", "slide": "a.tif", "label": "a_truth.png", "class": "", "mpp": ""},
        {"subject_id": "b", "slide": "b.tif", "label": "", "class": "fat", "mpp": "0.5"}])
    run_failing(["predict", "--csv", str(wrong), "--output-dir", str(tmp_path / "no"), "--model", str(model)],
                "line 2: label", "a_truth.png is no GeoJSON annotations; a tile classifier is scored against",
                "line 3: class 'fat' is not a class value or name")
    regression = tile_classifier(tmp_path / "repository", "regression")
    run_failing(["predict", "--csv", str(table), "--output-dir", str(tmp_path / "no"), "--model", str(regression)],
                "model tiles_regression is a regression model, whose tiles they give no value")
    run_failing(["predict", "--csv", str(table), "--output-dir", str(tmp_path / "no"), "--model",
                 str(stain_model(tmp_path / "repository", mpp=1.0))],
                "the class column gives a tile classifier every tile's class; model stain is a segmentation model")
    assert not (tmp_path / "no").exists()


def test_every_csv_problem_is_reported_before_any_slide_runs(slides, tmp_path):
    folder, model = slides
    wrong = folder / "wrong.png"
    Image.fromarray(np.zeros((50, 50), np.uint8)).save(wrong)
    cut = tmp_path / "cut.tif"
    cut.write_bytes((folder / "a.tif").read_bytes()[:5000])
    table = write_csv(tmp_path / "bad.csv", [
        {"subject_id": "a", "slide": str(folder / "a.tif"), "label": str(wrong), "mpp": "-1"},
        {"subject_id": "a", "slide": str(folder / "missing.tif"), "label": "", "mpp": ""},
        {"subject_id": "c", "slide": str(folder / "b.tif"), "label": "", "mpp": ""},
        {"subject_id": "d", "slide": str(cut), "label": "", "mpp": "0.5"},
    ])
    out = tmp_path / "preds"
    line = run_failing(["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model)],
                       "aspect ratio", "mpp '-1'", "is on an earlier line too", "missing.tif is not a file",
                       "line 4: slide", "b.tif carries no resolution; give its level-0 microns per pixel in the mpp "
                       "column", "line 5: ", "cut.tif is truncated: it holds 5000 bytes")
    assert "in the mpp column (or --mpp, for every row without one)" in line
    assert not out.exists()


def test_label_images_that_hold_no_class_values_are_refused_before_any_slide_runs(slides, tmp_path):
    """A mask saved as 0/127/254 for classes 0/1/2, or in an annotation tool's colours, would score
    Dice 0 against a right map; each is refused by name, as is an empty slide cell."""
    folder, model = slides
    truth = np.asarray(Image.open(folder / "a_truth.png"))
    Image.fromarray((truth * 127).astype(np.uint8)).save(tmp_path / "scaled.png")
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)              # black, red, green
    Image.fromarray(palette[truth]).save(tmp_path / "colours.png")
    Image.fromarray(np.stack([truth] * 3, axis=-1)).save(tmp_path / "grey_as_rgb.png")
    import tifffile

    tifffile.imwrite(tmp_path / "rgb16.tif", np.stack([truth] * 3, axis=-1).astype(np.uint16), photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tif", truth.astype(np.float32))
    table = write_csv(tmp_path / "labels.csv", [
        {"subject_id": "a", "slide": str(folder / "a.tif"), "label": str(tmp_path / "scaled.png")},
        {"subject_id": "b", "slide": str(folder / "a.tif"), "label": str(tmp_path / "colours.png")},
        {"subject_id": "c", "slide": "", "label": ""},
        {"subject_id": "d", "slide": str(folder / "a.tif"), "label": str(tmp_path / "rgb16.tif")},
        {"subject_id": "e", "slide": str(folder / "a.tif"), "label": str(tmp_path / "float.tif")},
    ])
    out = tmp_path / "preds"
    run_failing(["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model)],
                "line 2: label", "holds value(s) [127, 254] that are no class of model", "(0, 1, 2)",
                "line 3: label", "its pixels are coloured (RGB)", "line 4: the slide column is empty",
                "line 5: label", "its pixels are 16-bit colour (RGB)", "line 6: label", "its pixels are floating-point")
    assert not out.exists()
    table = write_csv(tmp_path / "grey.csv", [{"subject_id": "a", "slide": str(folder / "a.tif"),
                                               "label": str(tmp_path / "grey_as_rgb.png")}])
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model),
                                       "--quiet"])                  # a grey label saved as RGB holds class values
    assert result.exit_code == 0, result.output
    assert float(next(csv.DictReader((out / "slides.csv").open()))["dice_stroma"]) > 0.97


def test_a_failing_slide_is_reported_after_the_others_are_written(slides, tmp_path):
    folder, model = slides
    table = write_csv(tmp_path / "run.csv", [
        {"subject_id": "a", "slide": str(folder / "a.tif")},
        {"subject_id": "glass", "slide": str(folder / "glass.tif")},
    ])
    out = tmp_path / "preds"
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model),
                                       "--quiet"])
    assert result.exit_code == 1
    listing = out / "failures.csv"
    assert f"1 of 2 slide(s) failed, the others were written (listed in {listing}): glass:" in result.output
    assert "glass: failed: " in result.output
    assert "no tissue found" in result.output and "run it on its own with --tissue-mask, or leave it out of the CSV" \
        in result.output and "give the tissue with" not in result.output
    assert (out / "a_labels.tif").is_file() and not (out / "glass_labels.tif").exists()
    listed = list(csv.DictReader((out / "failures.csv").open()))
    assert [row["subject_id"] for row in listed] == ["glass"] and "no tissue found" in listed[0]["error"]
    assert [row["subject_id"] for row in csv.DictReader((out / "slides.csv").open())] == ["a"]
    (out / "glass_labels.tif").write_bytes((out / "a_labels.tif").read_bytes())      # as if an earlier run's
    again = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model),
                                      "--quiet"])
    assert again.exit_code == 1 and "(glass_labels.tif: an earlier run's, left as they were)" in again.output
    run_failing(["predict", "--csv", str(table), "--output-dir", str(tmp_path / "other"), "--model", str(model),
                 "--tissue-mask", str(folder / "a_truth.png")],
                "--tissue-mask is for one whole-slide image; a --csv run makes each slide's tissue mask itself")


def test_a_table_of_patches_is_told_apart_and_many_problems_make_one_short_line(slides, tmp_path):
    folder, model = slides
    rows = [{"subject_id": "a", "slide": str(folder / "a.tif"), "l0_x": 0, "l0_y": 0, "tissue": 1.0}
            for _ in range(3)]                          # trainer patches' own columns, whatever the config names
    patches = write_csv(tmp_path / "patches.csv", rows)
    out = tmp_path / "preds"
    run_failing(["predict", "--csv", str(patches), "--output-dir", str(out), "--model", str(model)],
                "is a table of patches (trainer patches wrote it, for trainer fit); a --csv run of slides takes one "
                "row per whole slide")
    many = write_csv(tmp_path / "many.csv", [{"subject_id": f"s{i}", "slide": f"missing{i}.tif"} for i in range(15)])
    line = run_failing(["predict", "--csv", str(many), "--output-dir", str(out), "--model", str(model)],
                       "missing0.tif is not a file", "; and 5 more")
    assert "missing10.tif" not in line and not out.exists()


def test_a_slide_whose_mpp_cell_is_far_too_fine_is_told_to_fix_the_mpp_column(slides, tmp_path):
    folder, model = slides
    table = write_csv(tmp_path / "fine.csv", [{"subject_id": "a", "slide": str(folder / "a.tif"), "mpp": "0.02"}])
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(tmp_path / "out"),
                                       "--model", str(model)])
    assert result.exit_code == 1
    assert "if that is not its size, give its true resolution with the mpp column" in result.output


def test_mpp_with_a_csv_run_is_the_resolution_of_each_row_without_one(slides, tmp_path):
    """As trainer patches takes it: a row's own mpp value wins; --mpp is for a model of slides only."""
    folder, model = slides
    table = write_csv(tmp_path / "run.csv", [{"subject_id": "b", "slide": str(folder / "b.tif"), "mpp": ""}])
    out = tmp_path / "preds"
    run_failing(["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model)],
                "carries no resolution", "in the mpp column (or --mpp, for every row without one)")
    result = CliRunner().invoke(main, ["predict", "--csv", str(table), "--output-dir", str(out), "--model", str(model),
                                       "--mpp", "0.5", "--quiet"])
    assert result.exit_code == 0, result.output
    assert (out / "b_labels.tif").is_file()
    run_failing(["predict", "--csv", str(table), "--output-dir", str(tmp_path / "x"), "--model", str(model), "--mpp",
                 "-1"], "--mpp -1 must be microns per pixel in")
    scans = tmp_path / "scans.csv"
    scans.write_text("subject_id,image\na,a.nii.gz\n")
    run_failing(["predict", "--csv", str(scans), "--output-dir", str(tmp_path / "x"), "--model",
                 str(bright_model(tmp_path / "repo")), "--mpp", "0.5"], "--mpp is the resolution of slides")
