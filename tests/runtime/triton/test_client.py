"""`runtime predict --server`: the same files as a local run, over HTTP and gRPC, from a real
Triton server started with `runtime serve`; and the errors of a wrong server, model or version,
and of a server stopped in the middle of a slide."""
from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from runtime.commands.cli import main
from tests.conftest import REPO
from tests.dicomkit import copy_series
from tests.modelkit import blob_volume, run_failing, write_scan
from tests.slidekit import tissue_image, write_slide
from tests.tritonkit import crash_server, free_ports, kill, need_triton, read_until, served_bone, start_serve

MODEL = "demo_bright_structures"
SLIDE_MODEL = "demo_stain_regions"
TILES = "tile_classes"
DENSITY = "density"
BONE = "bone"
FLAT = "flat_bone"
FLAT_DENSITY = "flat_density"


def _tile_classifier(repository) -> None:
    """A per-tile classifier (glass or tissue, on each tile's mean colour) built into `repository`."""
    from export import graphs
    from export.package import build_from_onnx
    from export.spec import parse_spec

    spec = yaml.safe_load((REPO / "export" / "demo_slide_spec.yaml").read_text(encoding="utf-8"))
    spec.update(name=TILES, task="classification", classes={0: "glass", 1: "tissue"}, patch={"size": [128, 128]},
                output={"activation": "softmax", "label_rule": "argmax"})
    spec["window"].update(overlap=0.0, blending="constant")
    onnx_path = graphs.save(graphs.channel_classifier(3, 2, 2), repository / "tiles.onnx")
    build_from_onnx(onnx_path, parse_spec(spec, "tile spec"), repository)
    onnx_path.unlink()


def _scan_models(repository) -> None:
    """A CT classifier (mean density, low, mid or high), a bone segmentation (served_bone), and 2D
    models of both built into `repository`."""
    from export import graphs
    from export.package import build_from_onnx
    from export.spec import parse_spec

    base = yaml.safe_load((REPO / "export" / "demo_spec.yaml").read_text(encoding="utf-8"))
    density = {**base, "name": DENSITY, "task": "classification", "classes": {0: "low", 1: "mid", 2: "high"},
               "preprocessing": [{"normalize": {"mean": [0], "std": [100]}}, {"resize": {"shape": [3, 16, 16]}}],
               "patch": {"size": [3, 16, 16]}, "window": {"mode": "whole"},
               "output": {"activation": "softmax", "label_rule": "argmax"}}
    onnx_path = graphs.save(graphs.channel_classifier(1, 3, 3), repository / f"{DENSITY}.onnx")
    build_from_onnx(onnx_path, parse_spec(density, f"{DENSITY} spec"), repository)
    onnx_path.unlink()
    served_bone(repository, BONE)
    flat = {**base, "name": FLAT, "dimensions": 2, "axis_order": "yx", "classes": {0: "background", 1: "bone"},
            "preprocessing": [{"normalize": {"mean": [0], "std": [100]}}], "patch": {"size": [32, 32]}}
    flat_density = {**density, "name": FLAT_DENSITY, "dimensions": 2, "axis_order": "yx",
                    "preprocessing": [{"normalize": {"mean": [0], "std": [100]}}, {"resize": {"shape": [16, 16]}}],
                    "patch": {"size": [16, 16]}}
    for spec, graph in ((flat, graphs.bright_structures(2)), (flat_density, graphs.channel_classifier(1, 2, 3))):
        onnx_path = graphs.save(graph, repository / f"{spec['name']}.onnx")
        build_from_onnx(onnx_path, parse_spec(spec, f"{spec['name']} spec"), repository)
        onnx_path.unlink()


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """The committed model repository, and a tile classifier, a CT classifier and a bone
    segmentation beside its models."""
    repository = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(REPO / "model_repository", repository)
    _tile_classifier(repository)
    _scan_models(repository)
    return repository


@pytest.fixture(scope="module")
def server(repository):
    need_triton("http", "grpc")
    ports = free_ports(3)
    process = start_serve(repository, ports)
    try:
        read_until(process, "ready:")
        yield ports
    finally:
        kill(process)


def predict(*args) -> str:
    result = CliRunner().invoke(main, ["predict", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_served_files_are_the_local_files_bit_for_bit(server, tmp_path, scheme):
    http_port, grpc_port, _ = server
    address = f"127.0.0.1:{http_port}" if scheme == "http" else f"grpc://127.0.0.1:{grpc_port}"
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)), spacing_xyz=(1.0, 1.25, 2.5),
                      direction=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0), origin=(10.0, -20.0, 5.0))
    local = tmp_path / "local"
    remote = tmp_path / "remote"
    local.mkdir()
    remote.mkdir()
    predict(scan, "--model", REPO / "model_repository" / MODEL, "--device", "openvino", "--output", local / "m.nii.gz",
            "--probabilities", local / "p.nii.gz")
    printed = predict(scan, "--server", address, "--model", MODEL, "--model-version", "1",
                      "--output", remote / "m.nii.gz", "--probabilities", remote / "p.nii.gz")
    assert f"wrote {remote / 'm.nii.gz'}" in printed
    predict(scan, "--model", REPO / "model_repository" / MODEL, "--device", "openvino", "--output", local / "only.nii.gz")
    predict(scan, "--server", address, "--model", MODEL, "--output", remote / "only.nii.gz")   # labels asked alone
    for name in ("m.nii.gz", "p.nii.gz", "only.nii.gz"):
        assert (remote / name).read_bytes() == (local / name).read_bytes(), name


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_served_slide_is_the_local_slide_bit_for_bit(server, repository, tmp_path, scheme):
    http_port, grpc_port, _ = server
    address = f"127.0.0.1:{http_port}" if scheme == "http" else f"grpc://127.0.0.1:{grpc_port}"
    slide = write_slide(tmp_path / "slide.tif", tissue_image(1200, 1600)[0])
    names = {"--output": "map.tiff", "--probabilities": "p.tiff", "--geojson": "r.geojson", "--overlay": "o.png"}
    for kind, model in (("local", repository / SLIDE_MODEL), ("remote", SLIDE_MODEL)):
        (tmp_path / kind).mkdir()
        server_args = ("--server", address) if kind == "remote" else ("--device", "openvino")
        printed = predict(slide, *server_args, "--model", model,
                          *[str(x) for option, name in names.items() for x in (option, tmp_path / kind / name)])
        assert "windows: " in printed and "run," in printed
    assert f"answered by {SLIDE_MODEL} version 1" in printed
    for name in names.values():
        assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name


def test_the_windows_of_many_clients_are_batched_by_the_companion_and_each_gets_its_own_answer(server, repository):
    import threading
    import urllib.request

    import tritonclient.http as http

    from runtime.predict import load_model
    from runtime.triton.adapter import run_windows

    http_port, _, metrics_port = server
    local = load_model(repository / SLIDE_MODEL, device="openvino")
    rng = np.random.default_rng(0)
    batches = [rng.random((1 + index % 3, 3, 256, 256), dtype=np.float32) for index in range(24)]
    batches[5] = batches[5][:, :, :128]                                       # one bad request among them
    answers: dict[int, object] = {}

    def send(indices: range) -> None:
        client = http.InferenceServerClient(f"127.0.0.1:{http_port}")
        for index in indices:
            tensor = http.InferInput("WINDOWS", list(batches[index].shape), "FP32")
            tensor.set_data_from_numpy(batches[index], binary_data=True)
            try:
                answers[index] = client.infer(f"{SLIDE_MODEL}_windows", [tensor]).as_numpy("WINDOW_OUTPUTS")
            except Exception as error:  # noqa: BLE001 - the bad request's refusal is checked below
                answers[index] = error
        client.close()

    def counts() -> tuple[int, int]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        found = {kind: int(float(re.search(rf'^nv_inference_{kind}count\{{model="{SLIDE_MODEL}_windows",'
                                           rf'version="1"\}} (\S+)$', text, re.M).group(1)))
                 for kind in ("", "exec_")}
        return found[""], found["exec_"]

    before = counts()
    threads = [threading.Thread(target=send, args=(range(start, 24, 8),)) for start in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert "takes (N, 3, 256, 256)" in str(answers.pop(5))
    for index, answer in answers.items():
        np.testing.assert_allclose(answer, run_windows(local, batches[index]), atol=1e-5)
    windows, executions = (after - first for after, first in zip(counts(), before))
    assert windows == sum(len(batch) for batch in batches)                  # Triton counts the refused one's too
    assert executions < len(answers), (windows, executions)          # requests shared model calls


def test_a_served_tile_model_writes_the_local_table_and_the_pinned_digest_is_checked(server, repository, tmp_path):
    from runtime.manifest import version_digest

    http_port, _, _ = server
    slide = write_slide(tmp_path / "slide.tif", tissue_image(1200, 1600)[0])
    local, remote = tmp_path / "local.csv", tmp_path / "remote.csv"
    predict(slide, "--model", repository / TILES, "--device", "openvino", "--output", local)
    digest = version_digest(repository / TILES)
    predict(slide, "--server", f"127.0.0.1:{http_port}", "--model", TILES, "--output", remote,
            "--expect-digest", digest)
    assert remote.read_bytes() == local.read_bytes() and len(local.read_text().splitlines()) > 5
    wrong = tmp_path / "wrong.csv"
    run_failing(["predict", str(slide), "--server", f"127.0.0.1:{http_port}", "--model", TILES, "--output", str(wrong),
                 "--expect-digest", "sha256:" + "0" * 64], f"has digest {digest}", "not the pinned version")
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)))
    run_failing(["predict", str(scan), "--server", f"127.0.0.1:{http_port}", "--model", MODEL, "--output",
                 str(tmp_path / "m.nii.gz"), "--overlay", str(tmp_path / "o.png")],
                "--overlay is for whole-slide images")
    run_failing(["predict", str(scan), "--server", f"127.0.0.1:{http_port}", "--model", SLIDE_MODEL, "--output",
                 str(tmp_path / "m.nii.gz")], f"model {SLIDE_MODEL} is a histology model", "whole-slide image")
    run_failing(["predict", str(slide), "--server", f"127.0.0.1:{http_port}", "--model", f"{SLIDE_MODEL}_windows",
                 "--output", str(wrong)], f"serves the windows of model {SLIDE_MODEL}", f"--model {SLIDE_MODEL}")
    assert not wrong.exists() and not (tmp_path / "m.nii.gz").exists()


def test_csv_runs_of_scans_and_of_slides_over_the_server_write_the_local_files(server, repository, tmp_path):
    http_port, grpc_port, _ = server
    rows = ["subject_id,image,label"]
    for index in range(2):
        volume = blob_volume((20, 40, 36), seed=index)
        write_scan(tmp_path / f"s{index}.nii.gz", volume, spacing_xyz=(1.0, 1.25, 2.5))
        write_scan(tmp_path / f"l{index}.nii.gz", (volume > np.percentile(volume, 90)).astype(np.uint8),
                   spacing_xyz=(1.0, 1.25, 2.5))
        rows.append(f"case{index},s{index}.nii.gz,l{index}.nii.gz")
    (tmp_path / "scans.csv").write_text("\n".join(rows) + "\n")
    write_slide(tmp_path / "slide.tif", tissue_image(1200, 1600)[0])
    (tmp_path / "slides.csv").write_text("subject_id,slide\nfirst,slide.tif\n")
    runs = [("scans.csv", MODEL, f"127.0.0.1:{http_port}"), ("slides.csv", SLIDE_MODEL, f"grpc://127.0.0.1:{grpc_port}")]
    for table, model, address in runs:
        local, remote = tmp_path / f"local_{table}", tmp_path / f"remote_{table}"
        predict("--csv", tmp_path / table, "--model", repository / model, "--device", "openvino", "--output-dir", local,
                "--save-probabilities")
        printed = predict("--csv", tmp_path / table, "--server", address, "--model", model, "--output-dir", remote,
                          "--save-probabilities")
        assert f"answered by {model} version 1" in printed
        written = sorted(path.name for path in local.iterdir())
        assert written == sorted(path.name for path in remote.iterdir()), written
        assert len([name for name in written if "_probabilities." in name]) == (2 if table == "scans.csv" else 1)
        for name in written:
            assert (remote / name).read_bytes() == (local / name).read_bytes(), name


def test_a_served_classifier_and_the_dicom_objects_of_a_served_segmentation_are_the_local_ones(
        server, repository, data_dir, tmp_path, highdicom):
    """Over --server, a classifier's values (printed, --output, --dicom-sr) and a segmentation's
    DICOM SEG and SR of volumes are those of a local run on the same backend."""
    import pydicom

    http_port, grpc_port, _ = server
    series = tmp_path / "study"                                    # two series in one folder: --series picks one
    copy_series(data_dir / "dicom" / "dcmqi_ct3", series, prefix="a_")
    uid = copy_series(data_dir / "dicom" / "dcmqi_ct3", series, prefix="b_")
    runs = ((DENSITY, f"127.0.0.1:{http_port}", ("--output", "values.csv", "--dicom-sr", "sr.dcm", "--series", uid)),
            (BONE, f"grpc://127.0.0.1:{grpc_port}", ("--output", "labels.nii.gz", "--dicom-seg", "seg.dcm",
                                                      "--dicom-sr", "sr.dcm", "--series", uid)))
    for model, address, options in runs:
        local, remote = tmp_path / f"local_{model}", tmp_path / f"remote_{model}"
        printed = []
        for folder, where in ((local, ("--model", repository / model, "--device", "openvino")),
                              (remote, ("--server", address, "--model", model))):
            folder.mkdir()
            named = [folder / value if value.endswith((".csv", ".dcm", ".gz")) else value for value in options]
            printed.append(predict(series, *where, *named).splitlines()[0])
        if model == DENSITY:
            assert printed[0] == printed[1] and printed[0].startswith("subject_id=study, predicted=")
            assert (remote / "values.csv").read_bytes() == (local / "values.csv").read_bytes()
        else:
            assert (remote / "labels.nii.gz").read_bytes() == (local / "labels.nii.gz").read_bytes()
            np.testing.assert_array_equal(pydicom.dcmread(remote / "seg.dcm").pixel_array,
                                          pydicom.dcmread(local / "seg.dcm").pixel_array)
        measured = []
        for folder in (local, remote):
            content = highdicom.sr.MeasurementReport.from_sequence([highdicom.sr.srread(folder / "sr.dcm")])
            groups = content.get_image_measurement_groups() or content.get_volumetric_roi_measurement_groups()
            measured.append([group.get_measurements()[0].value for group in groups])
        assert measured[0] == measured[1] and len(measured[0]) == (3 if model == DENSITY else 1)
    assert measured[0][0] > 0                                        # the bone's volume


def test_a_volume_given_to_a_served_2d_model_is_run_slice_by_slice_as_a_local_run_does(server, repository, tmp_path):
    """The served config takes 2D images; the client sends a volume's slices one by one, and a
    classifier leaves its slices of one value (all zero, padding) out of the mean, as a local run does."""
    http_port, _, _ = server
    volume = blob_volume((7, 40, 36)).astype(np.float32) * 3
    volume[:2] = 0
    volume[6] = -2000
    scan = write_scan(tmp_path / "volume.nii.gz", volume, spacing_xyz=(0.75, 0.75, 2.0))
    rgb = tmp_path / "colour.png"
    from PIL import Image

    Image.fromarray(np.arange(20 * 24 * 3).reshape(20, 24, 3).astype(np.uint8)).save(rgb)
    for model, outputs in ((FLAT, ("labels.nii.gz", "probabilities.nii.gz")), (FLAT_DENSITY, ("values.csv",))):
        printed = []
        for where, options in (("local", ("--model", repository / model, "--device", "openvino")),
                               ("remote", ("--server", f"127.0.0.1:{http_port}", "--model", model))):
            (tmp_path / where).mkdir(exist_ok=True)
            named = ["--output", tmp_path / where / outputs[0]]
            if len(outputs) > 1:
                named += ["--probabilities", tmp_path / where / outputs[1]]
            printed.append(predict(scan, *options, *named).splitlines()[0])
        if model == FLAT_DENSITY:
            assert printed[0] == printed[1] and "predicted=" in printed[0]
        for name in outputs:
            assert (tmp_path / "remote" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    run_failing(["predict", str(rgb), "--server", f"127.0.0.1:{http_port}", "--model", FLAT, "--output",
                 str(tmp_path / "x.nii.gz")], "model flat_bone expects 1 channel(s)", "colour.png is a colour image")


def test_the_request_the_serving_docs_show_runs_and_answers_as_the_runtime(server, tmp_path, monkeypatch):
    import SimpleITK as sitk

    http_port, _, _ = server
    text = (REPO / "docs" / "serving.md").read_text(encoding="utf-8")
    source = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert '"127.0.0.1:8000"' in source
    write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)), spacing_xyz=(1.0, 1.25, 2.5))
    predict(tmp_path / "scan.nii.gz", "--model", REPO / "model_repository" / MODEL, "--device", "openvino",
            "--output", tmp_path / "local.nii.gz")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(source.replace('"127.0.0.1:8000"', f'"127.0.0.1:{http_port}"'), "docs/serving.md", "exec"), namespace)
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "local.nii.gz")))
    np.testing.assert_array_equal(namespace["labels"], expected)
    assert np.count_nonzero(expected) > 0


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_an_answer_later_than_the_timeout_is_one_error_line(server, tmp_path, scheme):
    http_port, grpc_port, _ = server
    address = f"127.0.0.1:{http_port}" if scheme == "http" else f"grpc://127.0.0.1:{grpc_port}"
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((96, 192, 192)), spacing_xyz=(2.5, 2.5, 4.0))
    out = tmp_path / "m.nii.gz"                                  # resampled to 2 x 1.5 x 1.5 mm: seconds of work
    run_failing(["predict", str(scan), "--server", address, "--model", MODEL, "--output", str(out), "--timeout", "1"],
                f"{MODEL} at 127.0.0.1:", "gave no answer within 1 s", "--timeout")
    assert not out.exists()


def test_a_wrong_server_model_or_version_is_one_error_line(server, tmp_path):
    http_port, grpc_port, metrics_port = server
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)))
    out = tmp_path / "m.nii.gz"
    dead = free_ports(1)[0]
    run_failing(["predict", str(scan), "--server", f"127.0.0.1:{dead}", "--model", MODEL, "--output", str(out)],
                f"cannot reach a Triton server at http://127.0.0.1:{dead}", "runtime serve")
    run_failing(["predict", str(scan), "--server", f"127.0.0.1:{http_port}", "--model", "liver", "--output", str(out)],
                "has no ready model 'liver'", MODEL)
    run_failing(["predict", str(scan), "--server", f"127.0.0.1:{http_port}", "--model", MODEL, "--model-version", "7",
                 "--output", str(out)], "version 7")
    run_failing(["predict", str(scan), "--server", "ftp://127.0.0.1:1", "--model", MODEL, "--output", str(out)],
                "http:// or grpc://")
    run_failing(["predict", str(scan), "--server", f"127.0.0.1:{metrics_port}", "--model", MODEL, "--output",
                 str(out)], "gave no Triton answer", "not its metrics port")     # it answers 200, empty, to all
    for address, other in ((f"127.0.0.1:{grpc_port}", "gRPC"), (f"grpc://127.0.0.1:{http_port}", "HTTP")):
        run_failing(["predict", str(scan), "--server", address, "--model", MODEL, "--output", str(out)],
                    "takes connections but does not answer as a Triton server's", f"is it its {other} port?")
    run_failing(["predict", str(scan), "--model", str(REPO / "model_repository" / MODEL), "--model-version", "1",
                 "--output", str(out)], "--model-version is for --server")
    assert not out.exists()


def test_a_server_that_takes_the_connection_but_never_answers_is_said_to_have_stalled(tmp_path):
    """A listening socket that never answers, as a stopped (SIGSTOP) or wedged server is."""
    import socket

    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)))
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        port = listening.getsockname()[1]
        run_failing(["predict", str(scan), "--server", f"127.0.0.1:{port}", "--model", MODEL, "--output",
                     str(tmp_path / "m.nii.gz"), "--timeout", "1"],
                    f"the Triton server at http://127.0.0.1:{port} did not answer within 1 s", "--timeout")
    assert not (tmp_path / "m.nii.gz").exists()


def test_a_server_stopped_in_the_middle_of_a_slide_fails_the_run_clearly_and_a_new_one_serves_it(repository, tmp_path):
    need_triton("http")
    image = np.full((6000, 8000, 3), 245, np.uint8)                   # about 600 windows: seconds of requests
    image[1200:4800, 1000:7000] = (200, 120, 160)                                # stroma-pink tissue on glass
    slide = write_slide(tmp_path / "slide.tif", image, mpp=1.0)
    ports = free_ports(3)
    out = tmp_path / "map.tiff"
    args = ["predict", str(slide), "--server", f"127.0.0.1:{ports[0]}", "--model", SLIDE_MODEL, "--output", str(out),
            "--quiet"]
    process = start_serve(repository, ports)
    client = None
    try:
        read_until(process, "ready:")
        client = subprocess.Popen([sys.executable, "-c", "from runtime.commands.cli import main; main()", *args],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        read_until(client, "tissue:")                       # planned: its windows go to the server from now on
        client.send_signal(signal.SIGSTOP)
        crash_server(process)
        client.send_signal(signal.SIGCONT)
        printed, _ = client.communicate(timeout=120)
        errors = [line for line in printed.splitlines() if line.startswith("error:")]
        assert client.returncode == 1 and len(errors) == 1 and "Traceback" not in printed, printed
        assert f"127.0.0.1:{ports[0]}" in errors[0] and "still runs" in errors[0], errors[0]
        assert not out.exists() and not list(tmp_path.glob(".medflow-slide-*"))
        process = start_serve(repository, ports)
        read_until(process, "ready:")
        assert "windows: " in predict(*args[1:]) and out.is_file()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
        kill(process)


def test_a_version_built_into_a_polled_repository_is_served_beside_the_last_without_a_restart(tmp_path):
    import time

    from export import graphs
    from export.package import build_from_onnx
    from export.spec import parse_spec

    need_triton("http")
    repository = tmp_path / "repository"
    shutil.copytree(REPO / "model_repository" / MODEL, repository / MODEL, ignore=shutil.ignore_patterns("__pycache__"))
    scan = write_scan(tmp_path / "scan.nii.gz", blob_volume((20, 40, 36)))
    local = tmp_path / "local.nii.gz"
    predict(scan, "--model", REPO / "model_repository" / MODEL, "--device", "openvino", "--output", local)
    ports = free_ports(3)
    log = tmp_path / "server.log"
    process = start_serve(repository, ports, "--poll", "1", "--log", str(log))

    def loads(version: int) -> int:
        return log.read_text(encoding="utf-8").count(f'"loading: {MODEL}:{version}"')

    def run(name: str, *version: str) -> tuple[str, bytes]:
        out = tmp_path / f"{name}.nii.gz"
        printed = predict(scan, "--server", f"127.0.0.1:{ports[0]}", "--model", MODEL, "--output", out,
                          *(("--model-version", *version) if version else ()))
        return printed, out.read_bytes()

    try:
        assert "looks at" in read_until(process, "every 1 s")
        assert f"answered by {MODEL} version 1" in run("before")[0]
        time.sleep(2)              # a version whose stub wrote its bytecode into it is loaded again a poll later
        assert loads(1) == 1, log.read_text(encoding="utf-8")
        onnx_path = graphs.save(graphs.bright_structures(3), tmp_path / "bright.onnx")
        spec = yaml.safe_load((REPO / "export" / "demo_spec.yaml").read_text(encoding="utf-8"))
        spec["preprocessing"][0] = {"resample": {"spacing": [4.0, 3.0, 3.0]}}      # version 2 sees a coarser grid
        assert build_from_onnx(onnx_path, parse_spec(spec, "v2 spec"), repository).name == "2"
        deadline = time.monotonic() + 60
        while f"answered by {MODEL} version 2" not in run("newest")[0]:     # the server finds it by itself
            assert time.monotonic() < deadline, "version 2 was not served within 60 s"
            time.sleep(0.5)
        written = {version: run(f"v{version}", version)[1] for version in ("1", "2")}
        assert written["1"] == local.read_bytes() == run("pinned", "1")[1]
        assert written["2"] != written["1"] and run("latest")[1] == written["2"]   # no version: the newest
        time.sleep(2)
        assert loads(2) == 1, log.read_text(encoding="utf-8")
    finally:
        kill(process)


def test_an_answer_that_does_not_fit_the_scan_is_refused():
    from runtime.triton.scans import checked
    from runtime.errors import ModelError

    shape = (4, 5, 6)
    good = {"LABELS": np.zeros(shape, np.uint8), "PROBABILITIES": np.full((2, *shape), 0.5, np.float32)}
    assert set(checked(good, shape, MODEL)) == {"LABELS", "PROBABILITIES"}
    for bad, said in [({"LABELS": np.zeros(shape, np.float64)}, "LABELS float64"),
                      ({"LABELS": np.zeros((2, *shape), np.uint8)}, "LABELS uint8 (2, 4, 5, 6)"),
                      ({"PROBABILITIES": np.full((2, 4, 5, 7), 0.5, np.float32)}, "PROBABILITIES float32"),
                      ({"PROBABILITIES": np.full((2, *shape), 3.0, np.float32)}, "outside [0, 1]")]:
        with pytest.raises(ModelError, match=re.escape(said)):
            checked(bad, shape, MODEL)


def test_scores_that_do_not_fit_the_served_manifest_are_refused(tmp_path):
    import dataclasses

    from runtime.triton.scans import scored
    from runtime.errors import ModelError
    from runtime.manifest import load_manifest
    from tests.modelkit import density_classifier, mean_density_model

    classifier = load_manifest(density_classifier(tmp_path / "repo"))[0]
    regressor = load_manifest(mean_density_model(tmp_path / "repo"))[0]
    answer = scored({"SCORES": np.array([0.1, 0.7, 0.2], np.float32)}, classifier, DENSITY)
    assert answer.label == 1 and answer.scores.tolist() == pytest.approx([0.1, 0.7, 0.2])
    assert scored({"SCORES": np.array([-40.5], np.float32)}, regressor, "mean_density").label is None
    raw = dataclasses.replace(classifier, output=dataclasses.replace(classifier.output, activation="none"))
    assert scored({"SCORES": np.array([9.1, -3.0, 2.0], np.float32)}, raw, "raw").label == 0   # its own values
    for bad, manifest, said in [({}, classifier, "SCORES none"),
                                ({"SCORES": np.array([0.5, 0.5], np.float64)}, classifier, "SCORES float64"),
                                ({"SCORES": np.array([0.1, 0.9], np.float32)}, classifier, "expected float32 (3,)"),
                                ({"SCORES": np.array([0.1, 0.2, 0.3, 0.4], np.float32)}, classifier, "(4,)"),
                                ({"SCORES": np.array([0.1, 1.7, 0.2], np.float32)}, classifier, "in [0, 1]"),
                                ({"SCORES": np.array([np.nan], np.float32)}, regressor, "finite"),
                                ({"SCORES": np.array([1.0, 2.0], np.float32)}, regressor, "expected float32 (1,)")]:
        with pytest.raises(ModelError, match=re.escape(said)):
            scored(bad, manifest, "served")
