"""`trainer patches`: patches mined from synthetic slides at the model's resolution, their labels, the
table `trainer fit` reads, and every refusal as one error line with nothing written."""
from __future__ import annotations

import csv
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from tests.slidekit import tissue_image, without_tiles, write_slide
from tests.trainer.histokit import HISTOLOGY, write_slides
from tests.trainerkit import changed, write_config
from trainer.cli import main
from trainer.patches import save_png

SMALL = (384, 512)   # level-0 pixels at 0.5 um: 192 x 256 model pixels at 1 um, a 3 x 4 grid of 64-pixel patches


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _patches(folder: Path, data: dict[str, Any] | None = None, *options: str) -> Any:
    config = write_config(folder, data or HISTOLOGY)
    return CliRunner().invoke(main, ["patches", str(folder / "slides.csv"), "--config", str(config),
                                     "--output", str(folder / "patches"), *options])


def _refused(folder: Path, result: Any, *expected: str) -> str:
    """The one error line of a refused run; nothing was written beside the slides."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (folder / "patches").exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".patches")]
    return lines[0]


def test_patches_are_the_slide_at_the_model_resolution_with_their_labels(tmp_path):
    truths = write_slides(tmp_path, [1, 2], SMALL)
    result = _patches(tmp_path)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("slide1.tif (subject case1): ") and "(12 on the grid)" in lines[0]
    assert lines[-1] == f"wrote {len(_rows(tmp_path / 'patches' / 'patches.csv'))} patch(es) and " \
                       f"{tmp_path / 'patches' / 'patches.csv'}"
    rows = _rows(tmp_path / "patches" / "patches.csv")
    assert list(rows[0]) == ["patch_id", "subject_id", "red", "green", "blue", "label", "slide", "l0_x", "l0_y", "tissue"]
    assert {r["subject_id"] for r in rows} == {"case1", "case2"} and len({r["patch_id"] for r in rows}) == len(rows)
    level1 = tifffile.imread(tmp_path / "slide1.tif", key=1)       # 1 um/pixel: the model's own pixels
    for row in (r for r in rows if r["subject_id"] == "case1"):
        assert row["red"] == row["green"] == row["blue"] == f"images/{row['patch_id']}.png"
        assert float(row["tissue"]) >= 0.5
        x, y = int(row["l0_x"]) // 2, int(row["l0_y"]) // 2
        image = np.asarray(Image.open(tmp_path / "patches" / row["red"]))
        assert image.shape == (64, 64, 3) and np.array_equal(image, level1[y:y + 64, x:x + 64])
        label = np.asarray(Image.open(tmp_path / "patches" / row["label"]))
        centres = truths[0][1::2, 1::2]                            # the truth under each model pixel's centre
        assert label.dtype == np.uint8 and np.array_equal(label, centres[y:y + 64, x:x + 64])


def _as_annotations(truth: np.ndarray, path: Path, **extra: Any) -> Path:
    """The truth's regions as QuPath exports annotations: GeoJSON polygons in level-0 pixels named by class."""
    import json

    from runtime.slide.outputs import default_colors, geojson_regions

    names = [HISTOLOGY["data"]["classes"][value] for value in range(3)]
    collection = geojson_regions(truth, (1.0, 1.0), names, default_colors(3), min_pixels=1)
    collection["features"] += extra.get("features", [])
    path.write_text(json.dumps(collection), encoding="utf-8")
    return path


def test_qupath_annotations_give_the_labels_their_label_image_gives(tmp_path):
    """The truth's outlines as GeoJSON (traced on pixel edges, simplified within half a pixel) label
    the patches as the truth image does, but at the few model pixels whose centre lies on an edge."""
    truths = write_slides(tmp_path, [1, 2], SMALL)
    assert _patches(tmp_path).exit_code == 0
    (tmp_path / "patches").rename(tmp_path / "from_images")
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
             "properties": {"classification": {"name": "nuclei"}}}
    for seed, truth in zip([1, 2], truths):
        _as_annotations(truth, tmp_path / f"slide{seed}.geojson", features=[point])
    table = (tmp_path / "slides.csv").read_text().replace("_truth.png", ".geojson")
    (tmp_path / "slides.csv").write_text(table)
    result = _patches(tmp_path)
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "patches" / "patches.csv")
    assert [r["patch_id"] for r in rows] == [r["patch_id"] for r in _rows(tmp_path / "from_images" / "patches.csv")]
    ours = np.stack([np.asarray(Image.open(tmp_path / "patches" / r["label"])) for r in rows])
    theirs = np.stack([np.asarray(Image.open(tmp_path / "from_images" / r["label"])) for r in rows])
    assert set(np.unique(theirs)) == {0, 1, 2} and np.mean(ours == theirs) >= 0.98


def test_each_model_pixel_takes_the_class_of_the_last_annotation_holding_its_centre(tmp_path):
    """Rectangles on even level-0 coordinates: no model pixel centre (odd coordinates at 0.5 um
    level 0, 1 um model) lies on an edge, so the expected labels are exact."""
    import json

    write_slides(tmp_path, [1], SMALL)

    def box(x0, y0, x1, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    features = [{"type": "Feature", "properties": {"classification": {"name": name}},
                 "geometry": {"type": "Polygon", "coordinates": rings}} for name, rings in (
        ("nuclei", [box(100, 60, 300, 200)]),
        ("stroma", [box(200, 100, 400, 300), box(250, 150, 350, 250)]))]      # painted last, with a hole
    (tmp_path / "slide1.geojson").write_text(json.dumps(features))            # a list, as QuPath 0.3 exports
    (tmp_path / "slides.csv").write_text((tmp_path / "slides.csv").read_text().replace("_truth.png", ".geojson"))
    result = _patches(tmp_path, None, "--min-tissue", "0")
    assert result.exit_code == 0, result.output
    ys, xs = np.mgrid[0:192, 0:256] * 2 + 1                                   # model pixel centres, level 0
    inside = [(x0 < xs) & (xs < x1) & (y0 < ys) & (ys < y1) for x0, y0, x1, y1 in
              ((100, 60, 300, 200), (200, 100, 400, 300), (250, 150, 350, 250))]
    expected = np.where(inside[1] & ~inside[2], 2, np.where(inside[0], 1, 0))
    seen = set()
    for row in _rows(tmp_path / "patches" / "patches.csv"):
        x, y = int(row["l0_x"]) // 2, int(row["l0_y"]) // 2
        label = np.asarray(Image.open(tmp_path / "patches" / row["label"]))
        assert np.array_equal(label, expected[y:y + 64, x:x + 64]), row["patch_id"]
        seen |= set(np.unique(label).tolist())
    assert seen == {0, 1, 2}


def test_with_an_ignore_value_unannotated_pixels_take_it_and_patches_without_annotation_are_left_out(tmp_path):
    """Sparse annotations: one nuclei rectangle and one background rectangle, the rest of the slide
    unannotated. Their pixels keep their classes, every other pixel is data.ignore_value, and only
    the grid patches an annotation reaches are kept."""
    import json

    write_slides(tmp_path, [1], SMALL)

    def box(x0, y0, x1, y1):
        return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    features = [{"type": "Feature", "properties": {"classification": {"name": name}},
                 "geometry": {"type": "Polygon", "coordinates": [box(*corners)]}}
                for name, corners in (("Ignore*", (120, 70, 140, 90)),       # QuPath's class, listed first: carved
                                      ("nuclei", (100, 60, 200, 100)), ("background", (300, 300, 360, 360)),
                                      ("stroma", (262, 140, 265, 200)),      # a stroke between the share points
                                      ("stroma", (0, 256, 128, 384)), ("Ignore*", (0, 250, 130, 384)))]   # all carved
    (tmp_path / "slide1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    (tmp_path / "slides.csv").write_text((tmp_path / "slides.csv").read_text().replace("_truth.png", ".geojson"))
    result = _patches(tmp_path, changed(HISTOLOGY, data__ignore_value=255), "--min-tissue", "0")
    assert result.exit_code == 0, result.output
    ys, xs = np.mgrid[0:192, 0:256] * 2 + 1                                   # model pixel centres, level 0
    nuclei = (100 < xs) & (xs < 200) & (60 < ys) & (ys < 100)
    background = (300 < xs) & (xs < 360) & (300 < ys) & (ys < 360)
    stroke = (262 < xs) & (xs <= 265) & (140 < ys) & (ys < 200)                # x = 265 on its edge counts
    carved = (120 < xs) & (xs < 140) & (70 < ys) & (ys < 90)
    expected = np.where(nuclei & ~carved, 1, np.where(background, 0, np.where(stroke, 2, 255)))
    rows = _rows(tmp_path / "patches" / "patches.csv")
    assert sorted((int(r["l0_y"]) // 128, int(r["l0_x"]) // 128) for r in rows) == [(0, 0), (0, 1), (1, 2), (2, 2)]
    assert "4 patch(es) kept of 4 with at least 0% tissue and an annotated pixel (12 on the grid)" in result.output
    for row in rows:
        x, y = int(row["l0_x"]) // 2, int(row["l0_y"]) // 2
        label = np.asarray(Image.open(tmp_path / "patches" / row["label"]))
        assert np.array_equal(label, expected[y:y + 64, x:x + 64]), row["patch_id"]
    shutil.rmtree(tmp_path / "patches")
    _refused(tmp_path, _patches(tmp_path, None, "--min-tissue", "0"), "'Ignore*'", "Ignore* regions are left "
             "unannotated only by a segmentation config (or a model trained with one) that sets data.ignore_value")


def test_with_an_ignore_value_a_label_images_patches_holding_it_alone_are_left_out(tmp_path):
    truths = write_slides(tmp_path, [1], SMALL)
    sparse = truths[0].copy()
    sparse[:, 128:] = 255                                     # the grid's first column of patches alone annotated
    Image.fromarray(sparse).save(tmp_path / "slide1_truth.png")
    result = _patches(tmp_path, changed(HISTOLOGY, data__ignore_value=255), "--min-tissue", "0")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "patches" / "patches.csv")
    assert sorted(int(r["l0_x"]) for r in rows) == [0, 0, 0]
    assert "3 patch(es) kept of 3 with at least 0% tissue and an annotated pixel (12 on the grid)" in result.output
    sparse[:] = 255
    Image.fromarray(sparse).save(tmp_path / "slide1_truth.png")
    shutil.rmtree(tmp_path / "patches")
    _refused(tmp_path, _patches(tmp_path, changed(HISTOLOGY, data__ignore_value=255), "--min-tissue", "0"),
             "no patch of any slide has 0% tissue and an annotated pixel (one not data.ignore_value, 255)")


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.update(features=[{**c["features"][0], "properties": {"classification": {"name": "fat"}}}]),
     "annotations of class(es) 'fat', which data.classes do(es) not name (background (0), nuclei (1), stroma (2))"),
    (lambda c: c.update(features=[{**c["features"][0], "properties": {}}]),
     "1 area annotation(s) have no classification"),
    (lambda c: [f["geometry"].update(coordinates=[[[x * 100, y * 100] for x, y in ring]
                                                  for ring in f["geometry"]["coordinates"]])
                for f in c["features"] if f["geometry"]["type"] == "Polygon"],
     "off the slide's 512 x 384 level-0 pixels"),
    (lambda c: c.update(type="Nothing"), "not a GeoJSON FeatureCollection or list of features"),
    (lambda c: c["features"].append("junk"), "is 'junk', not a GeoJSON Feature object"),
    (lambda c: c["features"][0]["geometry"].update(type="polygon"),
     "feature 1's geometry type 'polygon' is not a GeoJSON geometry type"),
    (lambda c: c["features"][0]["geometry"]["coordinates"][0][1].__setitem__(0, True),
     "feature 1 (Polygon) has coordinates that are not finite numbers"),
    (lambda c: c["features"][0]["geometry"]["coordinates"][0][1].__setitem__(0, 10 ** 400),
     "feature 1 (Polygon) has coordinates that are not finite numbers"),
    (lambda c: c["features"][0].update(geometry={"type": "MultiPolygon", "coordinates": [
        [[[0, 0], [1, 0], [1, 1], [0, 0]]]] * 100_001}), "more than 100,000 polygons"),
    (lambda c: c["features"][0]["geometry"].update(coordinates=[[[0, 0], [50, 50], [50, 0], [0, 50], [0, 0]]]),
     "feature 1 (Polygon) is not a valid polygon (Self-intersection"),
    (lambda c: c["features"][0]["geometry"].update(coordinates=[[[0, 0], [50, 0], [100, 0], [0, 0]]]),
     "feature 1 (Polygon) is not a valid polygon (Self-intersection"),
    (lambda c: c["features"][0].update(geometry={"type": "GeometryCollection", "geometries": [
        {"type": "Point", "coordinates": [1, 1]}]}), "feature 1 (GeometryCollection) holds no area"),
])
def test_annotations_the_labels_cannot_be_read_from_are_refused(tmp_path, change, expected):
    import json

    [truth] = write_slides(tmp_path, [1], SMALL)
    path = _as_annotations(truth, tmp_path / "slide1.geojson")
    collection = json.loads(path.read_text())
    change(collection)
    path.write_text(json.dumps(collection))
    (tmp_path / "slides.csv").write_text((tmp_path / "slides.csv").read_text().replace("_truth.png", ".geojson"))
    _refused(tmp_path, _patches(tmp_path), "slides.csv line 2: label", "slide1.geojson: ", expected)


def test_tiles_take_the_annotation_class_covering_half_of_them_where_the_slide_has_no_class(tmp_path):
    """Regions of two classes annotated on one slide give tiles of both; a tile no class covers
    half of is left out."""
    import json

    write_slides(tmp_path, [1], SMALL)

    def area(name, x0, x1):
        return {"type": "Feature", "properties": {"objectType": "annotation", "classification": {"name": name}},
                "geometry": {"type": "Polygon", "coordinates": [[[x0, 0], [x1, 0], [x1, 384], [x0, 384], [x0, 0]]]}}
    (tmp_path / "slide1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        area("normal", 0, 128), area("tumour", 144, 300)]}))           # column 0 normal, 1 (7/8) tumour
    (tmp_path / "slides.csv").write_text("slide,subject_id,label\nslide1.tif,case1,slide1.geojson\n")
    data = changed(HISTOLOGY, task="classification", data__label="grade", data__classes={0: "normal", 1: "tumour"},
                   model={"architecture": "vgg16"}, inference={})
    result = _patches(tmp_path, data, "--min-tissue", "0")
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "patches" / "patches.csv")
    column = {0: "0", 128: "1"}                                         # level-0 x of each column kept: its class
    assert rows and all(r["grade"] == column[int(r["l0_x"])] for r in rows)
    assert {r["grade"] for r in rows} == {"0", "1"}                     # column 2 (1/3 tumour) left out
    tumour = [r for r in rows if r["grade"] == "1"]                     # 7/8 tumour, 1/8 unannotated: no share of it
    assert all(r["share_1"] == "0.875" and r["share_0"] in ("0", "") for r in tumour), tumour
    assert "and an annotated class over 50% of it" in result.output
    (tmp_path / "slide1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        area("normal", 0, 192), area("tumour", 192, 256)]}))           # column 1: half each, a tie: no class
    shutil.rmtree(tmp_path / "patches")
    tied = _patches(tmp_path, data, "--min-tissue", "0")
    assert tied.exit_code == 0 and all(r["l0_x"] == "0" for r in _rows(tmp_path / "patches" / "patches.csv"))
    shutil.rmtree(tmp_path / "patches")
    (tmp_path / "slide1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        area("Ignore*", 0, 128), area("normal", 0, 256)]}))             # QuPath's Ignore* over column 0, first
    carved = _patches(tmp_path, data, "--min-tissue", "0")
    assert carved.exit_code == 0 and {r["l0_x"] for r in _rows(tmp_path / "patches" / "patches.csv")} == {"128"}
    shutil.rmtree(tmp_path / "patches")
    (tmp_path / "slides.csv").write_text("slide,subject_id,label\nslide1.tif,case1,slide1_truth.png\n")
    _refused(tmp_path, _patches(tmp_path, data), "line 2: the table has no class column, and this row's label is no "
             "annotation file")


def test_objects_that_are_not_area_annotations_are_left_out_and_counted_and_a_frame_off_the_tissue_warned_of(
        tmp_path):
    """QuPath's detections and cells, points and empty geometries are said; polygons of a
    GeometryCollection and a derived class ("nuclei: Positive") are read; annotations shrunk to the
    slide's corner (microns at 0.5 um per pixel) lie on glass and are warned of."""
    import json

    [truth] = write_slides(tmp_path, [1], SMALL)
    path = _as_annotations(truth, tmp_path / "slide1.geojson")
    collection = json.loads(path.read_text())
    first = collection["features"][0]
    older = {k: v for k, v in first["properties"].items() if k != "objectType"}     # QuPath 0.2: the kind in `id`
    collection["features"] += [
        {**first, "properties": {**first["properties"], "objectType": "detection"}},
        {**first, "properties": older, "id": "PathCellObject"},
        {**first, "geometry": None},
        {**first, "geometry": {"type": "GeometryCollection", "geometries": [
            {"type": "Point", "coordinates": [3, 3]},
            {"type": "Polygon", "coordinates": [[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]]}]},
         "properties": {"objectType": "annotation", "classification": {"names": ["nuclei", "Positive"]}}}]
    path.write_text("\ufeff" + json.dumps(collection), encoding="utf-8")            # as some editors save it
    (tmp_path / "slides.csv").write_text((tmp_path / "slides.csv").read_text().replace("_truth.png", ".geojson"))
    data = changed(HISTOLOGY, data__classes={**HISTOLOGY["data"]["classes"], 3: "nuclei: Positive"})
    result = _patches(tmp_path, data, "--min-tissue", "0")
    assert result.exit_code == 0, result.output
    assert "slide1.geojson: 1 cell object(s), 1 detection object(s), 1 feature(s) without a geometry left out" \
        in result.output and "warning" not in result.output, result.output
    labels = [np.asarray(Image.open(tmp_path / "patches" / r["label"]))
              for r in _rows(tmp_path / "patches" / "patches.csv") if r["l0_x"] == r["l0_y"] == "0"]
    assert [np.count_nonzero(label == 3) for label in labels] == [100]          # 20 x 20 level 0: 10 x 10 pixels
    for feature in collection["features"]:
        if feature.get("geometry") and feature["geometry"]["type"] == "Polygon":
            feature["geometry"]["coordinates"] = [[[x / 4, y / 4] for x, y in ring]
                                                  for ring in feature["geometry"]["coordinates"]]
    path.write_text(json.dumps(collection), encoding="utf-8")
    shutil.rmtree(tmp_path / "patches")
    shrunk = _patches(tmp_path, data, "--min-tissue", "0")
    assert shrunk.exit_code == 0 and "warning: slide1.geojson: only " in shrunk.output and \
        "of the annotated area lies on the slide's tissue" in shrunk.output, shrunk.output


def test_the_tissue_share_and_the_limit_choose_the_patches_with_the_seed(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    everything = _patches(tmp_path, None, "--min-tissue", "0")
    assert everything.exit_code == 0, everything.output
    touching = len(_rows(tmp_path / "patches" / "patches.csv"))
    (tmp_path / "patches").rename(tmp_path / "all")
    full = _patches(tmp_path, None, "--min-tissue", "1")
    assert full.exit_code == 0, full.output
    whole = _rows(tmp_path / "patches" / "patches.csv")
    assert 0 < len(whole) < touching <= 12 and all(float(r["tissue"]) == 1.0 for r in whole)
    picks = []
    for attempt in range(3):
        folder = tmp_path / f"limited{attempt}"
        config = write_config(tmp_path, {**HISTOLOGY, "seed": 0 if attempt < 2 else 5})
        result = CliRunner().invoke(main, ["patches", str(tmp_path / "slides.csv"), "--config", str(config),
                                           "--output", str(folder), "--min-tissue", "0", "--max-per-slide", "3"])
        assert result.exit_code == 0 and f"3 patch(es) kept of {touching}" in result.output, result.output
        picks.append([r["patch_id"] for r in _rows(folder / "patches.csv")])
    assert picks[0] == picks[1] and len(picks[0]) == 3
    assert picks[2] != picks[0]


def test_classification_patches_carry_the_class_and_the_share_of_each_label_value(tmp_path):
    write_slides(tmp_path, [1, 2], SMALL)
    (tmp_path / "slides.csv").write_text("slide,subject_id,class,label\nslide1.tif,case1,tumour,slide1_truth.png\n"
                                         "slide2.tif,case2,0,\n", encoding="utf-8")
    data = changed(HISTOLOGY, task="classification", data__label="grade",
                   data__classes={0: "normal", 1: "tumour"}, model={"architecture": "vgg16"}, inference={},
                   cross_validation={"testing_folds": 0, "validation_fraction": 0.5})
    result = _patches(tmp_path, data)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "patches" / "labels").exists()
    rows = _rows(tmp_path / "patches" / "patches.csv")
    assert list(rows[0])[5:] == ["grade", "slide", "l0_x", "l0_y", "tissue", "share_0", "share_1", "share_2"]
    assert {r["grade"] for r in rows if r["subject_id"] == "case1"} == {"1"}
    assert {r["grade"] for r in rows if r["subject_id"] == "case2"} == {"0"}
    first = [r for r in rows if r["subject_id"] == "case1"]
    assert all(abs(sum(float(r[f"share_{v}"]) for v in range(3)) - 1) < 1e-5 for r in first)
    assert all(r["share_0"] == r["share_1"] == r["share_2"] == "" for r in rows if r["subject_id"] == "case2")
    checked = CliRunner().invoke(main, ["check", str(tmp_path / "config.yaml")])
    assert checked.exit_code == 0 and f"config OK: {len(rows)} subjects in 2 groups (subject_id), 1 fold" in \
        checked.output and "fold(s) 0.1 (" in checked.output, \
        checked.output


def test_a_linked_slide_keeps_the_name_it_was_given(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    (tmp_path / "linked.tif").symlink_to(tmp_path / "slide1.tif")
    (tmp_path / "slides.csv").write_text("slide,subject_id,label\nlinked.tif,case1,slide1_truth.png\n")
    result = _patches(tmp_path)
    assert result.exit_code == 0 and result.output.startswith("linked.tif (subject case1): "), result.output
    assert {row["slide"] for row in _rows(tmp_path / "patches" / "patches.csv")} == {str(tmp_path / "linked.tif")}


def test_a_missing_slide_is_refused_with_its_line(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    (tmp_path / "slides.csv").write_text("slide,subject_id,label\nslide1.tif,a,slide1_truth.png\n"
                                         "gone.tif,b,slide1_truth.png\n", encoding="utf-8")
    _refused(tmp_path, _patches(tmp_path), "slides.csv line 3:", "gone.tif: no such slide file")


def test_a_tile_missing_from_a_slide_inside_its_tissue_is_refused(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    image, _ = tissue_image(*SMALL, seed=1)          # stroma over level-1 rows 38-153, columns 42-179
    whole = write_slide(tmp_path / "whole.tif", image, tile=32)        # level 1 (1 um/pixel): 8 tiles a row
    without_tiles(whole, tmp_path / "slide1.tif", {1: [2 * 8 + 3]})     # level-1 rows 64-95, columns 96-127
    whole.unlink()
    _refused(tmp_path, _patches(tmp_path), "slide1.tif: level 1 holds no image at level-0 pixel",
             "inside the tissue mask")


def test_every_rows_problem_is_said_at_once(tmp_path):
    truths = write_slides(tmp_path, [1, 2, 3], SMALL)
    (tmp_path / "slide1.tif").write_bytes(b"not a slide at all")
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(tmp_path / "slide2_truth.png")
    Image.fromarray((truths[2] * 127).astype(np.uint8)).save(tmp_path / "slide3_truth.png")   # 0/127/254
    line = _refused(tmp_path, _patches(tmp_path), "slides.csv line 2:", "neither OpenSlide nor Pillow reads this file",
                    "slides.csv line 3:", "is not the whole slide", "slides.csv line 4:", "[127, 254]")
    assert ".;" not in line


def test_an_unreadable_slide_is_refused(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    (tmp_path / "slide1.tif").write_bytes(b"not a slide at all")
    _refused(tmp_path, _patches(tmp_path), "slides.csv line 2:", "neither OpenSlide nor Pillow reads this file")


@pytest.mark.parametrize("size", [(100, 100), (250, 192)])
def test_a_label_image_of_another_aspect_ratio_is_refused(tmp_path, size):
    """Another shape, or the slide at half its size with 6 columns cut off (1.6 % of its width),
    which read as the whole slide would shift its right side's labels by 12 level-0 pixels."""
    write_slides(tmp_path, [1], SMALL)
    Image.fromarray(np.zeros(size[::-1], np.uint8)).save(tmp_path / "slide1_truth.png")
    _refused(tmp_path, _patches(tmp_path), f"{size[0]} x {size[1]} pixels is not the whole slide (512 x 384) at any "
                                           "one scale")


def test_a_whole_slide_image_is_any_scale_of_it_rounded_either_way():
    from runtime.slide.tissue import aspect_problem

    for size in [(512, 384), (256, 192), (171, 128), (170, 128), (103, 77), (102, 77), (1, 1), (3, 2)]:
        assert aspect_problem(*size, (512, 384)) is None, size
    for size in [(254, 180), (250, 192), (512, 380), (2, 4)]:
        assert aspect_problem(*size, (512, 384)) is not None, size
    assert aspect_problem(1970, 1500, (8000, 6000)) is not None and aspect_problem(2000, 1500, (8000, 6000)) is None


def test_a_colour_label_image_and_unknown_label_values_are_refused(tmp_path):
    truths = write_slides(tmp_path, [1], SMALL)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    Image.fromarray(palette[truths[0]]).save(tmp_path / "slide1_truth.png")
    _refused(tmp_path, _patches(tmp_path), "its pixels are RGB, not class values")
    Image.fromarray(np.stack([truths[0]] * 3, axis=-1)).save(tmp_path / "slide1_truth.png")   # grey saved as RGB
    result = _patches(tmp_path)
    assert result.exit_code == 0, result.output
    shutil.rmtree(tmp_path / "patches")
    Image.fromarray(truths[0] * 3).save(tmp_path / "slide1_truth.png")
    _refused(tmp_path, _patches(tmp_path), "holds value(s) [3, 6] that are no class of data.classes (0, 1, 2)")


def test_a_radiology_config_is_refused(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    data = changed(HISTOLOGY, modality="radiology", preprocessing=[], augmentation={})
    del data["slide"]
    _refused(tmp_path, _patches(tmp_path, data), "trainer patches mines slides for histology models",
             "modality is radiology")


def test_a_slide_without_tissue_is_refused(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    write_slide(tmp_path / "slide1.tif", np.full((*SMALL, 3), 242, np.uint8))
    _refused(tmp_path, _patches(tmp_path), "slides.csv line 2:", "no tissue found (the slide is uniform glass)")


def test_slides_smaller_than_a_patch_are_named_with_their_size_not_their_tissue(tmp_path):
    write_slides(tmp_path, [1, 2], (100, 512))          # 50 x 256 model pixels: no 64 x 64 patch fits
    _refused(tmp_path, _patches(tmp_path, None, "--min-tissue", "0"), "no slide holds one whole patch (slide1.tif is "
             "256 x 50 pixels at 1 um/pixel, smaller than one 64 x 64 patch, as are the others)", "smaller patch.size")
    write_slides(tmp_path / "mixed", [1], SMALL)
    write_slides(tmp_path / "mixed", [2], (100, 512))
    (tmp_path / "mixed" / "slides.csv").write_text("slide,subject_id,label\nslide1.tif,case1,slide1_truth.png\n"
                                                   "slide2.tif,case2,slide2_truth.png\n")
    result = _patches(tmp_path / "mixed")
    assert result.exit_code == 0, result.output
    assert ("slide2.tif (subject case2): 0 patch(es) kept of 0 with at least 50% tissue (0 on the grid: slide2.tif "
            "is 256 x 50 pixels at 1 um/pixel, smaller than one 64 x 64 patch)") in result.output, result.output


@pytest.mark.parametrize(("options", "expected"), [
    (["--min-tissue", "1.5"], "--min-tissue must be a share in [0, 1], got 1.5"),
    (["--max-per-slide", "0"], "--max-per-slide must be at least 1, got 0"),
    (["--mpp", "-1"], "--mpp is -1.0, not a resolution"),
])
def test_impossible_options_are_refused(tmp_path, options, expected):
    write_slides(tmp_path, [1], SMALL)
    _refused(tmp_path, _patches(tmp_path, None, *options), expected)


def test_the_patches_folder_is_made_as_any_folder_under_the_umask_or_keeps_the_empty_ones_mode(tmp_path):
    """Lab members read each other's patches: the folder is not private to its maker."""
    write_slides(tmp_path, [1], SMALL)
    previous = os.umask(0o022)
    try:
        assert _patches(tmp_path).exit_code == 0
        assert stat.S_IMODE((tmp_path / "patches").stat().st_mode) == 0o755
        shutil.rmtree(tmp_path / "patches")
        (tmp_path / "patches").mkdir(mode=0o750)
        (tmp_path / "patches").chmod(0o750)
        assert _patches(tmp_path).exit_code == 0
        assert stat.S_IMODE((tmp_path / "patches").stat().st_mode) == 0o750
    finally:
        os.umask(previous)


def test_the_patches_folder_keeps_the_set_group_id_bit_of_a_shared_folder_and_a_link_is_refused(tmp_path):
    """In a group's folder (set-group-ID), the patches and their files take the group."""
    write_slides(tmp_path, [1], SMALL)
    tmp_path.chmod(0o2775)
    assert _patches(tmp_path).exit_code == 0
    assert (tmp_path / "patches").stat().st_mode & stat.S_ISGID
    (tmp_path / "empty").mkdir()
    shutil.rmtree(tmp_path / "patches")
    (tmp_path / "patches").symlink_to(tmp_path / "empty")
    result = _patches(tmp_path)
    assert result.exit_code == 1 and f"--output {tmp_path / 'patches'} is a link; give the folder" in result.output


def test_an_output_folder_holding_files_is_left_as_it_was(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    (tmp_path / "patches").mkdir()
    (tmp_path / "patches" / "old.csv").write_text("earlier\n")
    result = _patches(tmp_path)
    assert result.exit_code == 1 and "already exists and is not an empty folder" in result.output
    assert [p.name for p in (tmp_path / "patches").iterdir()] == ["old.csv"]
    shutil.rmtree(tmp_path / "patches")
    (tmp_path / "patches").write_text("a file\n")
    result = _patches(tmp_path)
    assert result.exit_code == 1
    assert f"--output {tmp_path / 'patches'} is a file; --output is the folder" in result.output
    assert (tmp_path / "patches").read_text() == "a file\n"


def test_the_config_must_keep_a_subjects_patches_together(tmp_path):
    write_slides(tmp_path, [1], SMALL)
    data = changed(HISTOLOGY)
    del data["data"]["group_column"]
    _refused(tmp_path, _patches(tmp_path, data), "data.group_column is not set")


def test_label_patches_past_255_keep_their_values_as_uint16(tmp_path):
    save_png(np.array([[0, 300], [1000, 65535]]), tmp_path / "wide.png")
    save_png(np.array([[0, 2], [1, 255]]), tmp_path / "narrow.png")
    wide, narrow = Image.open(tmp_path / "wide.png"), Image.open(tmp_path / "narrow.png")
    assert (wide.mode, narrow.mode) == ("I;16", "L")
    assert np.asarray(wide).tolist() == [[0, 300], [1000, 65535]] and np.asarray(narrow).tolist() == [[0, 2], [1, 255]]


def test_an_mpp_column_gives_each_slide_its_own_resolution(tmp_path):
    """A slide whose file carries no resolution takes its row's mpp; the others keep their files'
    own (--mpp would have replaced every slide's); a bad mpp cell is refused with its line."""
    truths = write_slides(tmp_path, [1, 2], SMALL)
    image = tifffile.imread(tmp_path / "slide2.tif", key=0)
    write_slide(tmp_path / "slide2.tif", image, mpp=None)
    (tmp_path / "slides.csv").write_text("slide,subject_id,label,mpp\nslide1.tif,case1,slide1_truth.png,\n"
                                         "slide2.tif,case2,slide2_truth.png,0.5\n", encoding="utf-8")
    result = _patches(tmp_path)
    assert result.exit_code == 0, result.output
    rows = _rows(tmp_path / "patches" / "patches.csv")
    for row in (r for r in rows if r["subject_id"] == "case2"):
        x, y = int(row["l0_x"]) // 2, int(row["l0_y"]) // 2
        label = np.asarray(Image.open(tmp_path / "patches" / row["label"]))
        assert np.array_equal(label, truths[1][1::2, 1::2][y:y + 64, x:x + 64])       # read at 1 um, as slide 1
    assert {r["subject_id"] for r in rows} == {"case1", "case2"}
    shutil.rmtree(tmp_path / "patches")
    (tmp_path / "slides.csv").write_text("slide,subject_id,label,mpp\nslide2.tif,case2,slide2_truth.png,\n",
                                         encoding="utf-8")
    _refused(tmp_path, _patches(tmp_path), "carries no resolution", "with the slide table's mpp column (or --mpp")
    (tmp_path / "slides.csv").write_text("slide,subject_id,label,mpp\nslide2.tif,case2,slide2_truth.png,-2\n",
                                         encoding="utf-8")
    _refused(tmp_path, _patches(tmp_path), "slides.csv line 2, column mpp: '-2' is not level 0's microns per pixel")
