"""The runtime's commands on the embedded demo model."""
from __future__ import annotations

import re

from click.testing import CliRunner

from runtime.backends import openvino_available
from runtime.commands.cli import main
from tests.conftest import DEMO


def test_info_says_what_the_model_expects_and_returns():
    result = CliRunner().invoke(main, ["info", str(DEMO)])
    assert result.exit_code == 0, result.output
    assert "demo_bright_structures version 1" in result.output
    assert "1 channel(s): image" in result.output
    assert "0=background, 1=bright_structure" in result.output
    assert "resample {'spacing': [2.0, 1.5, 1.5]}; zscore {'region': 'nonzero'}" in result.output
    assert "patch 32×64×64, overlap 0.5, gaussian blending, batch 2" in result.output
    devices = re.search(r"devices     installed here: (.*); --device auto tries (.*)", result.output)
    assert devices is not None
    assert devices.group(1).split(", ")[0] == "cpu" and devices.group(2).split(", ")[-1] == "cpu"
    assert ("openvino" in devices.group(1)) == ("openvino" in devices.group(2)) == openvino_available()


def test_demo_finds_its_model_from_any_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo", "--output-dir", "out", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "phantom_mask.nii.gz").is_file()
    assert (tmp_path / "out" / "slide_labels.tif").is_file()
    assert "next, a scan of your own: runtime predict scan.nii.gz --model" in result.output
    assert "next, a slide of your own: runtime predict slide.svs --model" in result.output


def test_demo_segments_the_phantom_close_to_its_truth(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path), "--model", str(DEMO), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    dice = float(re.search(r"Dice against the phantom's truth = ([0-9.]+)", result.output).group(1))
    assert dice > 0.9 and "another model's Dice here says only that it ran" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phantom.nii.gz", "phantom_mask.nii.gz", "phantom_truth.nii.gz"]


def test_demo_of_another_model_says_its_dice_is_no_score_of_it(tmp_path):
    from tests.modelkit import bone_model

    other = bone_model(tmp_path / "repo")
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "out"), "--model", str(other),
                                       "--device", "cpu"])
    assert result.exit_code == 0 and "another model's Dice here says only that it ran" in result.output, result.output
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "v"), "--model", str(DEMO / "1"),
                                       "--device", "cpu"])
    assert result.exit_code == 0 and "another model's Dice" not in result.output, result.output   # its version folder


def test_the_demo_of_an_installed_package_knows_its_own_models_from_the_source_tree(tmp_path, monkeypatch):
    """Installed as the README installs it (pip install .), the package lies outside the checkout;
    run from the checkout, the demo runs its models and says nothing of another model."""
    from runtime.commands import single
    from tests.conftest import REPO

    monkeypatch.setattr(single, "__file__", str(tmp_path / "site-packages" / "runtime" / "commands" / "single.py"))
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Dice against the slide's truth" in result.output and "another model's Dice" not in result.output


def test_demo_replaces_a_link_in_its_folder_and_leaves_the_file_it_led_to(tmp_path):
    """The demo's own inputs (the phantom, its truth) are published as its outputs are: a link in
    their place is replaced, never written through to a file outside the folder."""
    victim = tmp_path / "victim.nii.gz"
    victim.write_bytes(b"someone else's file")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "phantom_truth.nii.gz").symlink_to(victim)
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "out"), "--model", str(DEMO),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert victim.read_bytes() == b"someone else's file"
    assert not (tmp_path / "out" / "phantom_truth.nii.gz").is_symlink()


def test_demo_runs_the_slide_model_over_its_synthetic_slide(tmp_path):
    from tests.conftest import REPO

    model = REPO / "model_repository" / "demo_stain_regions"
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path), "--model", str(model), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scores = dict(re.findall(r"(\w+) ([0-9.]+)", result.output.split("Dice against the slide's truth:")[1]))
    assert float(scores["nuclei"]) > 0.95 and float(scores["stroma"]) > 0.95
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "slide.tif", "slide_labels.tif", "slide_overlay.png", "slide_regions.geojson", "slide_truth.png"]
    assert "wrote " + str(tmp_path / "slide_overlay.png") in result.output
    assert f"next, a slide of your own: runtime predict slide.svs --model {model} --output" in result.output
    assert "next, a scan" not in result.output


def test_the_slide_demo_scores_another_slide_model_by_its_class_names_at_any_resolution(tmp_path):
    """A model at a resolution no whole multiple of the slide's is scored on the truth at its own;
    classes of other names are not scored against nuclei and stroma; a model of another task is
    refused before the output folder is made."""
    from tests.slidekit import stain_model, tile_classifier

    for mpp in (0.75, 0.25):                              # the slide is written at a 40x model's resolution
        other = stain_model(tmp_path / f"repo{mpp}", mpp=mpp)
        result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / f"a{mpp}"), "--model", str(other)])
        assert result.exit_code == 0, result.output
        scores = dict(re.findall(r"(\w+) ([0-9.]+)", result.output.split("Dice against the slide's truth:")[1]))
        assert float(scores["nuclei"]) > 0.9 and float(scores["stroma"]) > 0.95, result.output
        assert "another model's Dice here says only that it ran" in result.output
    renamed = stain_model(tmp_path / "other", names=("tissue", "dark"))
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "b"), "--model", str(renamed)])
    assert result.exit_code == 0, result.output
    assert ("Dice against the slide's truth: none: the model's classes (tissue, dark) are not the slide's (nuclei, "
            "stroma)") in result.output
    tiles = tile_classifier(tmp_path / "tiles")
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "c"), "--model", str(tiles)])
    assert result.exit_code == 1 and "a classification model, and the demo scores a segmentation" in result.output
    assert f"runtime predict slide.svs --model {tiles}" in result.output and not (tmp_path / "c").exists()


def test_demo_without_its_models_makes_no_output_folder(tmp_path, monkeypatch):
    from runtime.commands import single
    from runtime.errors import InputError

    def absent(model_path, default=single.DEMO_MODEL):
        raise InputError(f"the demo model {default} comes with the source tree")

    monkeypatch.setattr(single, "demo_model", absent)
    result = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 1 and "error: the demo model" in result.output
    assert not (tmp_path / "out").exists()


def test_progress_off_a_terminal_is_a_line_now_and_then_and_nothing_when_quiet(capsys):
    from runtime.commands.cli import Bar

    shown, quiet = Bar("predict", True, every_s=0.0), Bar("predict", False, every_s=0.0)
    for bar in (shown, quiet):
        bar.expect(10)
        bar.advance(5)
        bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines == ["predict: 0/10 windows, 0 s", "predict: 5/10 windows, 0 s"]


def test_info_and_verify_take_the_model_as_predict_does_with_model_too():
    runner = CliRunner()
    positional, named = (runner.invoke(main, ["info", *args]) for args in ([str(DEMO)], ["--model", str(DEMO)]))
    assert positional.exit_code == named.exit_code == 0 and positional.output == named.output
    verified = runner.invoke(main, ["verify", "--model", str(DEMO)])
    assert verified.exit_code == 0 and "files match their sha256" in verified.output, verified.output
    for args in ([], [str(DEMO), "--model", str(DEMO)]):
        refused = runner.invoke(main, ["info", *args])
        assert refused.exit_code == 1 and refused.output.strip().startswith("error: give the model once"), \
            refused.output


def test_verify_runs_a_version_without_samples_once_against_its_manifests_word(tmp_path):
    """A version made by hand has no stored samples to rerun: verify still runs one window of its
    patch and holds the output to what the manifest promises (it printed 0 samples reproduced)."""
    from export import graphs
    from tests.modelkit import make_model, run_failing, window

    three = [{"value": 0, "name": "low"}, {"value": 1, "name": "mid"}, {"value": 2, "name": "high"}]
    wrong = make_model(tmp_path / "wrong", graphs.channel_classifier(1, 3, 2), task="classification", classes=three,
                       window=window(patch_size=[6, 8, 8], mode="whole"))
    run_failing(["verify", str(wrong)], "returned an output of shape (1, 2)", "(1, 3)")
    right = make_model(tmp_path / "right", graphs.channel_classifier(1, 3, 3), task="classification", classes=three,
                       window=window(patch_size=[6, 8, 8], mode="whole"))
    result = CliRunner().invoke(main, ["verify", str(right)])
    assert result.exit_code == 0 and "no stored sample to reproduce" in result.output, result.output
    assert "one window of its patch run on" in result.output


def test_verify_refuses_a_version_without_samples_whose_window_gives_nan(tmp_path):
    """The smooth window verify runs has negative values: a graph taking their log gives NaN."""
    from onnx import helper

    from export import graphs
    from tests.modelkit import make_model, run_failing

    graph = graphs.identity(2, 3)
    graph.graph.node.append(helper.make_node("Log", [graph.graph.output[0].name], ["logged"]))
    graph.graph.output[0].name = "logged"
    model = make_model(tmp_path, graph, channels=["t1", "t2"],
                       onnx={"file": "model.onnx", "input": "input", "output": "logged", "opset": 17})
    run_failing(["verify", str(model)], "gives non-finite values (NaN or infinity) in",
                "for a window of its manifest's patch; a model must give finite values")


def test_verify_refuses_a_malformed_provenance_record_a_scored_table_would_trip_on(tmp_path):
    """A record the runtime acts on (here the hashed subjects trained on, a list where a mapping
    belongs) is refused by verify, not first by the table a user scores with the model."""
    from export import graphs
    from tests.modelkit import make_model, run_failing

    model = make_model(tmp_path, graphs.identity(2, 3), channels=["t1", "t2"], provenance={"trained_on": ["case_001"]})
    run_failing(["verify", str(model)], "provenance.trained_on is not {salt, subjects}", "re-export the model")
    fine = make_model(tmp_path / "fine", graphs.identity(2, 3), channels=["t1", "t2"],
                      provenance={"trained_on": {"salt": "ab", "subjects": ["0123456789abcdef"]}})
    result = CliRunner().invoke(main, ["verify", str(fine)])
    assert result.exit_code == 0, result.output


def test_logged_lines_read_as_the_commands_own_and_keep_a_logged_traceback():
    import logging

    from runtime.commands.reporting import LogLines

    def line(level: int, exc_info=None) -> str:
        record = logging.LogRecord("runtime.x", level, __file__, 1, "said %s", ("once",), exc_info)
        return LogLines().format(record)

    assert line(logging.WARNING) == "warning: said once"
    assert line(logging.INFO) == "info: runtime.x: said once"
    try:
        raise ValueError("inside")
    except ValueError:
        import sys

        logged = line(logging.ERROR, sys.exc_info())
    assert logged.startswith("error: said once\nTraceback") and "ValueError: inside" in logged


def test_python_dash_m_runtime_is_the_runtime_command():
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-m", "runtime", "--help"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "Usage: python -m runtime" in done.stdout and "predict" in done.stdout, done
