"""`runtime listen` against real DICOM peers on 127.0.0.1: dcmtk's storescu sends CT series (one of
them JPEG 2000), the listener segments each and sends its SEG to dcmtk's storescp, which dciodvfy
validates and which reads back to `runtime predict`'s label map; a caller not allowed is rejected; a
destination down at first gets the SEG once it is up; a listener killed after a study was sent
finishes it after a restart, and one killed while it was sent waits for it again; two studies sent
at once each come back; a report is skipped and an instance without its UIDs refused; the log names
no patient; the commands of docs/pacs.md run; a destination that never answers holds up no
segmentation and no stop."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from runtime.commands.cli import main
from tests.conftest import missing
from tests.dicomkit import copy_series, dciodvfy, dcmtk_tool
from tests.modelkit import bone_model
from tests.tritonkit import free_ports, kill, need_triton, read_until, served_bone, start_serve

WAIT_S = 90
pytestmark = pytest.mark.slow         # each test runs a listener and dcmtk's peers as processes


def dcmtk(tool: str) -> str:
    found = dcmtk_tool(tool)
    if found is None:
        missing(f"dcmtk's {tool} is not installed: apt-get install dcmtk")
    return found


@pytest.fixture(scope="module")
def bone(tmp_path_factory) -> Path:
    return bone_model(tmp_path_factory.mktemp("bone"))


@pytest.fixture()
def series(data_dir) -> Path:
    return data_dir / "dicom" / "dcmqi_ct3"


def start_listener(model: Path | str, storage: Path, port: int, destination: int, idle: float = 1.0,
                   *extra: str) -> subprocess.Popen:
    """`runtime listen` on CPU, or with the model a server runs where `extra` gives --server."""
    device = [] if "--server" in extra else ["--device", "cpu"]
    return subprocess.Popen(
        [sys.executable, "-c", "from runtime.commands.cli import main; main()", "listen", "--model", str(model),
         "--ae-title", "SEGMENTER", "--port", str(port), "--send-to", f"PACS@127.0.0.1:{destination}",
         "--allow", "CTSCANNER,OTHERCT", "--storage", str(storage), "--idle", str(idle), *device, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def start_node(bone: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, subprocess.Popen, Path, int]:
    """A listener (given the options `extra`) on the storage folder tmp_path/storage that sends its
    SEGs to a storescp writing into tmp_path/pacs: (the listener, the storescp, the storage folder,
    the port the listener takes)."""
    listen_port, pacs_port = free_ports(2)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    storage = tmp_path / "storage"
    return start_listener(bone, storage, listen_port, pacs_port, 1.0, *extra), pacs, storage, listen_port


def start_storescp(folder: Path, port: int) -> subprocess.Popen:
    folder.mkdir(exist_ok=True)
    return subprocess.Popen([dcmtk("storescp"), "--aetitle", "PACS", "--output-directory", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def send(series: Path, port: int, calling: str = "CTSCANNER") -> subprocess.CompletedProcess:
    return subprocess.run([dcmtk("storescu"), "-aet", calling, "-aec", "SEGMENTER", "127.0.0.1", str(port),
                           *map(str, sorted(series.iterdir()))], capture_output=True, text=True, timeout=120)


def stop(process: subprocess.Popen) -> str:
    """End a process this test started (SIGTERM, SIGKILL if it hangs); what it printed."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        printed, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        printed, _ = process.communicate()
    return printed or ""


def wait_for_segs(folder: Path, count: int) -> list[Path]:
    return wait_for_results(folder, count, "SG*")


def wait_for_results(folder: Path, count: int, pattern: str) -> list[Path]:
    """The first `count` files storescp wrote into `folder` whose names match `pattern` (SG* for a
    SEG, SR* for a report)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = sorted(folder.glob(pattern))
        if len(found) >= count:
            time.sleep(0.5)                                     # storescp finishes writing the file
            return found
        time.sleep(0.2)
    pytest.fail(f"{count} file(s) {pattern} did not arrive at storescp within {WAIT_S} s: {sorted(folder.iterdir())}")


def status(storage: Path) -> str:
    result = CliRunner().invoke(main, ["listen", "--status", "--storage", str(storage)])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_series_sent_by_storescu_comes_back_to_storescp_as_a_valid_seg_of_the_local_label_map(
        bone, series, tmp_path):
    """Its UIDs are made under the hospital's root (--uid-root)."""
    import highdicom

    root = "1.2.826.0.1.3680043.9.7"
    listener, pacs, _, listen_port = start_node(bone, tmp_path, "--uid-root", root)
    try:
        read_until(listener, "listening:")
        refused = send(series, listen_port, calling="STRANGER")                # not allowed: rejected
        assert refused.returncode != 0 and "Association Rejected" in refused.stderr + refused.stdout
        misdirected = subprocess.run([dcmtk("storescu"), "-aet", "CTSCANNER", "-aec", "OTHERNODE", "127.0.0.1",
                                      str(listen_port), *map(str, sorted(series.iterdir()))],
                                     capture_output=True, text=True, timeout=120)   # calls another node: rejected
        assert misdirected.returncode != 0 and "Association Rejected" in misdirected.stderr + misdirected.stdout
        assert send(series, listen_port).returncode == 0
        [seg_path] = wait_for_segs(tmp_path / "pacs", 1)
    finally:
        printed = stop(listener)
        stop(pacs)
    done = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True) if shutil.which("dciodvfy") \
        else missing("dciodvfy is not installed: apt-get install dicom3tools")
    assert [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")] == []
    CliRunner().invoke(main, ["predict", str(series), "--model", str(bone), "--output", str(tmp_path / "l.nii.gz")])
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "l.nii.gz")))
    from runtime.io import read_label, read_scan

    np.testing.assert_array_equal(read_label(seg_path, read_scan([series])), expected)
    seg = highdicom.seg.segread(seg_path)
    assert seg.SegmentSequence[0].SegmentLabel == "bone"
    assert seg.SOPInstanceUID.startswith(root + ".") and seg.SeriesInstanceUID.startswith(root + ".")
    voxel_ml = float(np.prod(sitk.ReadImage(str(tmp_path / "l.nii.gz")).GetSpacing())) / 1000
    assert "step=processed seconds=" in printed and f"found=bone:{np.count_nonzero(expected) * voxel_ml:.4g}mL" \
        in printed, printed
    for step in ("step=rejected from=STRANGER called=SEGMENTER", "step=rejected from=CTSCANNER called=OTHERNODE",
                 "step=receiving from=CTSCANNER", "step=processing instances=3", "step=processed",
                 "step=delivered to=PACS attempts=1"):
        assert step in printed, printed
    assert "JANCT000" not in printed and "99000" not in printed              # the patient's name and ID
    assert "delivered" in status(tmp_path / "storage")


def test_a_classifier_behind_the_node_sends_back_a_valid_sr_of_its_probabilities(series, tmp_path):
    """A classification model's node answers a series with a DICOM SR of the same probabilities
    `runtime predict` prints; the SR it routes back to itself is skipped, not classified."""
    import highdicom

    from tests.modelkit import density_classifier

    model = density_classifier(tmp_path / "repo")
    listen_port, pacs_port = free_ports(2)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    listener = start_listener(model, tmp_path / "storage", listen_port, pacs_port)
    printed = ""
    try:
        assert "SRs of density v1 go to PACS" in read_until(listener, "listening:")
        assert send(series, listen_port).returncode == 0
        [sr_path] = wait_for_results(tmp_path / "pacs", 1, "SR*")
        routed = subprocess.run([dcmtk("storescu"), "-aet", "CTSCANNER", "-aec", "SEGMENTER", "127.0.0.1",
                                 str(listen_port), str(sr_path)], capture_output=True, text=True, timeout=120)
        assert routed.returncode == 0
        printed = read_until(listener, "step=skipped")
    finally:
        printed += stop(listener)
        stop(pacs)
    assert dciodvfy(sr_path) == []
    local = CliRunner().invoke(main, ["predict", str(series), "--model", str(model), "--quiet"]).output
    expected = {name: float(value) for name, value in re.findall(r"probability_(\w+)=([0-9.e-]+)", local)}
    content = highdicom.sr.MeasurementReport.from_sequence([highdicom.sr.srread(sr_path)])
    found = {group.tracking_identifier: group.get_measurements()[0].value
             for group in content.get_image_measurement_groups()}
    assert found == pytest.approx(expected, abs=1e-6) and len(found) == 3
    predicted = re.search(r"predicted=\d+ \((\w+)\)", local).group(1)
    assert f"found={predicted}(p={expected[predicted]:.3g}" in printed, printed
    assert "step=delivered to=PACS attempts=1" in printed
    assert len(list((tmp_path / "pacs").iterdir())) == 1                 # the SR routed back made none


def test_a_segmentation_node_with_report_sends_the_sr_of_its_seg_volumes_beside_it_and_again_once_up(
        bone, series, tmp_path):
    """With --report the SEG goes with the SR of each segment's volume, in one association; while
    the destination is down neither is delivered, and both come once it is up."""
    import highdicom
    import pydicom

    listen_port, pacs_port = free_ports(2)
    listener = start_listener(bone, tmp_path / "storage", listen_port, pacs_port, 1.0, "--report")
    pacs = None
    try:
        assert "SEGs and SRs of bone v1 go to PACS" in read_until(listener, "listening:")
        assert send(series, listen_port).returncode == 0
        read_until(listener, "step=delivery-failed")                    # the PACS is down
        pacs = start_storescp(tmp_path / "pacs", pacs_port)
        [seg_path] = wait_for_results(tmp_path / "pacs", 1, "SG*")
        [sr_path] = wait_for_results(tmp_path / "pacs", 1, "SR*")
    finally:
        stop(listener)
        if pacs is not None:
            stop(pacs)
    assert dciodvfy(sr_path) == []
    seg = pydicom.dcmread(seg_path)
    content = highdicom.sr.MeasurementReport.from_sequence([highdicom.sr.srread(sr_path)])
    [group] = content.get_volumetric_roi_measurement_groups()
    reference = group.referenced_segment[0].ReferencedSOPSequence[0]
    assert (reference.ReferencedSOPInstanceUID, reference.ReferencedSegmentNumber) == (seg.SOPInstanceUID, 1)
    CliRunner().invoke(main, ["predict", str(series), "--model", str(bone), "--output", str(tmp_path / "l.nii.gz")])
    labels = sitk.ReadImage(str(tmp_path / "l.nii.gz"))
    bone_ml = np.count_nonzero(sitk.GetArrayFromImage(labels) == 1) * float(np.prod(labels.GetSpacing())) / 1000
    assert group.get_measurements()[0].value == pytest.approx(bone_ml, rel=1e-6) and bone_ml > 0
    assert "delivered" in status(tmp_path / "storage")


def test_a_segmentation_without_report_removes_the_report_of_the_seg_it_replaces(bone, series, tmp_path):
    """A series grown after a node with --report delivered its SEG and SR is segmented again by a
    node without it: the earlier SR, which measures the replaced SEG, is removed from the storage
    folder, so no later node sends it beside the new SEG."""
    from runtime.pacs.listener import Destination, Listener
    from runtime.pacs.storage import Storage
    from runtime.predict import load_model

    listen_port, pacs_port = free_ports(2)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    model = load_model(bone, device="cpu")
    files = sorted(series.iterdir())
    try:
        runs = ((True, files[:2], ("SG*", 1, "SR*", 1)), (False, files[2:], ("SG*", 2, "SR*", 1)))
        for report, sent, expected in runs:
            node = Listener(model, Storage(tmp_path / "storage"), "SEGMENTER", ["CTSCANNER"],
                            Destination("PACS", "127.0.0.1", pacs_port), idle_s=0.5, report=report)
            node.start("127.0.0.1", listen_port)
            try:
                assoc, datasets = open_association(sent, listen_port)
                assert all(assoc.send_c_store(dataset).Status == 0 for dataset in datasets)
                assoc.release()
                wait_for_results(tmp_path / "pacs", expected[1], expected[0])
                deadline = time.monotonic() + WAIT_S
                while "delivered" not in status(tmp_path / "storage") and time.monotonic() < deadline:
                    time.sleep(0.2)
            finally:
                node.stop(grace_s=1)
            assert len(list((tmp_path / "pacs").glob(expected[2]))) == expected[3]
    finally:
        stop(pacs)
    assert not list((tmp_path / "storage" / "results").glob("*.sr.dcm"))


def test_a_grown_series_gets_a_revised_sr_that_names_the_one_it_replaces(series, tmp_path):
    """A classifier's node answers a series that grows after its SR with a new SR, of the next series
    number, whose Predecessor Documents Sequence names the first; both validate."""
    import pydicom

    from tests.modelkit import density_classifier

    model = density_classifier(tmp_path / "repo")
    listen_port, pacs_port = free_ports(2)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    listener = start_listener(model, tmp_path / "storage", listen_port, pacs_port)
    files = sorted(series.iterdir())
    try:
        read_until(listener, "listening:")
        for sent, count in ((files[:2], 1), (files[2:], 2)):
            assoc, datasets = open_association(sent, listen_port)
            assert all(assoc.send_c_store(dataset).Status == 0 for dataset in datasets)
            assoc.release()
            reports = wait_for_results(tmp_path / "pacs", count, "SR*")
    finally:
        stop(listener)
        stop(pacs)
    first, second = sorted((pydicom.dcmread(path) for path in reports), key=lambda ds: int(ds.SeriesNumber))
    assert (int(first.SeriesNumber), int(second.SeriesNumber)) == (9101, 9102)
    named = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert named.ReferencedSOPInstanceUID == first.SOPInstanceUID and "PredecessorDocumentsSequence" not in first
    assert dciodvfy(reports[0]) == [] and dciodvfy(reports[1]) == []


def test_a_series_uid_sent_again_for_another_patient_is_refused_while_held_and_never_names_the_first_report(
        series, tmp_path):
    """A sender that gives another patient's series a UID the node holds has its instances refused
    (the held series untouched); once the held one is pruned, the other is answered by a first SR
    that names no report of the other patient as its predecessor."""
    import pydicom
    from pydicom.uid import generate_uid

    from tests.modelkit import density_classifier

    uid = pydicom.dcmread(sorted(series.iterdir())[0]).SeriesInstanceUID

    def other_patient(index: int, dataset: pydicom.Dataset) -> None:
        dataset.PatientID, dataset.PatientName = "OTHER-0002", "Other^Patient"

    copy_series(series, tmp_path / "other", series_uid=uid, study_uid=generate_uid(), edit=other_patient)
    model = density_classifier(tmp_path / "repo")
    listen_port, pacs_port = free_ports(2)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    listener = start_listener(model, tmp_path / "storage", listen_port, pacs_port)
    held = tmp_path / "storage" / "series" / uid
    try:
        read_until(listener, "listening:")
        assert send(series, listen_port).returncode == 0
        wait_for_results(tmp_path / "pacs", 1, "SR*")
        read_until(listener, "step=delivered")
        before = sorted(path.name for path in held.iterdir())
        assoc, datasets = open_association(sorted((tmp_path / "other").iterdir()), listen_port)
        assert [int(assoc.send_c_store(dataset).Status) for dataset in datasets] == [0x0110] * len(datasets)
        assoc.release()
        assert sorted(path.name for path in held.iterdir()) == before
        shutil.rmtree(held)                                      # pruned, as retention rules say
        assert send(tmp_path / "other", listen_port).returncode == 0
        reports = wait_for_results(tmp_path / "pacs", 2, "SR*")
    finally:
        printed = stop(listener)
        stop(pacs)
    assert "step=refused from=CTSCANNER reason=the node holds this series for study" in printed, printed
    assert "the sender gave two series one Series Instance UID" in printed
    second = next(ds for ds in map(pydicom.dcmread, reports) if ds.PatientID == "OTHER-0002")
    assert int(second.SeriesNumber) == 9101 and "PredecessorDocumentsSequence" not in second


def test_report_is_for_segmentation_models(tmp_path):
    from tests.modelkit import density_classifier, run_failing

    run_failing(["listen", "--model", str(density_classifier(tmp_path / "repo")), "--send-to", "PACS@127.0.0.1:4242",
                 "--allow", "CTSCANNER", "--storage", str(tmp_path / "storage"), "--report"],
                "--report sends the SR of a segmentation's volumes with its SEG", "density is a classification model")
    assert not (tmp_path / "storage").exists()


def test_a_node_whose_model_a_server_runs_sends_the_local_seg_and_sr_and_holds_series_while_the_server_is_down(
        series, tmp_path):
    """`runtime listen --server`: each series goes whole to the version of a bone model that a real
    Triton server (`runtime serve`) answered with when the node started; its SEG is the local label
    map. A series that completes while the server is down waits, and is segmented and sent
    once a server is up again."""
    from runtime.io import read_label, read_scan
    from runtime.triton.server import STOP_TIMEOUT_S

    need_triton("http")
    repository = tmp_path / "models"
    repository.mkdir()
    model = served_bone(repository)
    serve_ports, (listen_port, pacs_port) = free_ports(3), free_ports(2)
    server = start_serve(repository, serve_ports)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    listener = None
    try:
        read_until(server, "ready:")
        listener = start_listener("bone", tmp_path / "storage", listen_port, pacs_port, 1.0, "--report",
                                  "--server", f"127.0.0.1:{serve_ports[0]}")
        assert f"v1 (run by 127.0.0.1:{serve_ports[0]})" in read_until(listener, "listening:")
        assert send(series, listen_port).returncode == 0
        wait_for_results(tmp_path / "pacs", 1, "SR*")
        [first] = wait_for_segs(tmp_path / "pacs", 1)
        served = read_until(listener, "step=delivered")
        assert "step=server-unavailable" not in served, served          # not while the server is up
        stopping = time.monotonic()
        server.send_signal(signal.SIGTERM)           # the idle node holds no connection open that Triton waits for
        said, _ = server.communicate(timeout=90)
        assert time.monotonic() - stopping < STOP_TIMEOUT_S / 2 and "did not stop within" not in said, said
        again = tmp_path / "again"
        copy_series(series, again)
        assert send(again, listen_port).returncode == 0
        read_until(listener, "step=server-unavailable")
        assert len(list((tmp_path / "pacs").glob("SG*"))) == 1
        server = start_serve(repository, serve_ports)
        read_until(server, "ready:")
        second = next(path for path in wait_for_segs(tmp_path / "pacs", 2) if path != first)
    finally:
        printed = stop(listener) if listener is not None else ""
        kill(server)
        stop(pacs)
    assert "Traceback" not in printed and "step=failed" not in printed, printed
    result = CliRunner().invoke(main, ["predict", str(series), "--model", str(model), "--output",
                                       str(tmp_path / "local.nii.gz"), "--quiet"])
    assert result.exit_code == 0, result.output
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "local.nii.gz")))
    assert expected.any()
    np.testing.assert_array_equal(read_label(first, read_scan([series])), expected)
    np.testing.assert_array_equal(read_label(second, read_scan([again])), expected)
    assert dciodvfy(first) == [] and len(list((tmp_path / "pacs").glob("SR*"))) == 2


def test_a_node_refuses_a_destination_port_out_of_range_an_empty_allowed_title_or_a_bad_uid_root_first(
        bone, tmp_path):
    from tests.modelkit import run_failing

    node = ["listen", "--model", str(bone), "--storage", str(tmp_path / "storage")]
    run_failing([*node, "--send-to", "PACS@127.0.0.1:99999", "--allow", "CTSCANNER"],
                "port 99999 is out of range (1 to 65535)")
    run_failing([*node, "--send-to", "PACS@127.0.0.1:4242", "--allow", "CT SCANNER,,MR1"],
                "--allow 'CT SCANNER,,MR1' names an empty AE title")
    run_failing([*node, "--send-to", "PACS@127.0.0.1:4242", "--allow", "CTSCANNER", "--uid-root", "1.2.840.01"],
                "--uid-root '1.2.840.01' is no UID root")
    assert not (tmp_path / "storage").exists()


def test_a_node_refuses_an_unreachable_server_and_a_device_beside_it_before_it_makes_its_storage(tmp_path):
    from tests.modelkit import run_failing

    need_triton("http")
    [port] = free_ports(1)
    node = ["listen", "--model", "bone", "--send-to", "PACS@127.0.0.1:4242", "--allow", "CTSCANNER", "--storage",
            str(tmp_path / "storage"), "--server", f"127.0.0.1:{port}"]
    run_failing(node, f"cannot reach a Triton server at http://127.0.0.1:{port}")
    run_failing([*node, "--device", "cpu"], "--device cpu cannot be used with --server")
    run_failing(node[:-2] + ["--model-version", "1"], "--model-version is for --server")
    assert not (tmp_path / "storage").exists()


def test_a_series_of_a_modality_the_node_is_not_for_is_acknowledged_skipped_once_and_never_segmented(
        bone, series, tmp_path, caplog):
    from runtime.pacs.listener import Destination, Listener
    from runtime.pacs.storage import Storage
    from runtime.predict import load_model
    from tests.modelkit import run_failing

    listen_port, pacs_port = free_ports(2)
    node = Listener(load_model(bone, device="cpu"), Storage(tmp_path / "storage"), "SEGMENTER", ["CTSCANNER"],
                    Destination("PACS", "127.0.0.1", pacs_port), idle_s=0.2, modalities=frozenset({"MR", "PT"}))
    with caplog.at_level("INFO", logger="runtime.listen"):
        node.start("127.0.0.1", listen_port)
        try:
            assoc, datasets = open_association(sorted(series.iterdir()), listen_port)
            assert all(assoc.send_c_store(dataset).Status == 0 for dataset in datasets)     # acknowledged
            assoc.release()
            time.sleep(1.0)                                       # well past the idle time
        finally:
            node.stop(grace_s=1)
    skipped = [r.getMessage() for r in caplog.records if "step=skipped" in r.getMessage()]
    assert len(skipped) == 1 and "reason=modality CT is none this node segments (--modality MR,PT)" in skipped[0]
    assert not list((tmp_path / "storage" / "series").iterdir())
    assert not list((tmp_path / "storage" / "results").iterdir())
    run_failing(["listen", "--model", str(bone), "--send-to", "PACS@127.0.0.1:4242", "--allow", "CTSCANNER",
                 "--storage", str(tmp_path / "other"), "--modality", "CT,"], "--modality 'CT,'")
    assert not (tmp_path / "other").exists()
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:                    # another program has the port
        run_failing(["listen", "--model", str(bone), "--send-to", "PACS@127.0.0.1:4242", "--allow", "CTSCANNER",
                     "--storage", str(tmp_path / "other"), "--port", str(taken.getsockname()[1]), "--address",
                     "127.0.0.1"], f"cannot listen on 127.0.0.1:{taken.getsockname()[1]}", "is the port taken?")
    assert not (tmp_path / "other").exists()

    import pydicom

    for odd in (1, 0):                                        # one slice of another modality, after CT or first
        folder = tmp_path / f"mixed{odd}"

        def one_mr(index: int, dataset, odd: int = odd) -> None:
            if index == odd:
                dataset.Modality = "MR"

        mixed = copy_series(series, folder, edit=one_mr)
        storage = tmp_path / f"mixed{odd}_storage"
        node = Listener(load_model(bone, device="cpu"), Storage(storage), "SEGMENTER", ["CTSCANNER"],
                        Destination("PACS", "127.0.0.1", pacs_port), idle_s=0.2, modalities=frozenset({"CT"}))
        node.start("127.0.0.1", listen_port)
        try:
            for send_number in (1, 2):
                assoc, datasets = open_association(sorted(folder.iterdir()), listen_port)
                if send_number == 2:                          # corrected: the odd slice sent again as CT
                    for dataset in datasets:
                        dataset.Modality = "CT"
                assert all(assoc.send_c_store(dataset).Status == 0 for dataset in datasets)
                assoc.release()
                time.sleep(1.0)
                deadline = time.monotonic() + WAIT_S
                while send_number == 2 and "processed" not in status(storage) and time.monotonic() < deadline:
                    time.sleep(0.2)
                listed = status(storage)
                if send_number == 1:                          # not a SEG of two slices
                    assert "incomplete" in listed and "is of modality MR" in listed and "mixes modalities" in listed, \
                        listed
                    assert not (storage / "results" / f"{mixed}.dcm").exists()
        finally:
            node.stop(grace_s=1)
        assert "processed" in listed and (storage / "results" / f"{mixed}.dcm").is_file(), listed
        seg = pydicom.dcmread(storage / "results" / f"{mixed}.dcm")
        assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 3


def test_a_series_holding_an_instance_of_another_series_is_held_incomplete_not_segmented_without_it(
        bone, series, tmp_path):
    import pydicom

    from runtime.pacs.listener import Destination, Listener
    from runtime.pacs.storage import Storage
    from runtime.predict import load_model

    kept = pydicom.dcmread(sorted(series.iterdir())[2], stop_before_pixels=True).SOPInstanceUID

    def reused(index: int, dataset: pydicom.Dataset) -> None:
        if index == 2:                                        # a copy that kept one instance's UID
            dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = kept

    copy = copy_series(series, tmp_path / "copy", edit=reused)
    listen_port, pacs_port = free_ports(2)
    node = Listener(load_model(bone, device="cpu"), Storage(tmp_path / "storage"), "SEGMENTER", ["CTSCANNER"],
                    Destination("PACS", "127.0.0.1", pacs_port), idle_s=0.3)
    node.start("127.0.0.1", listen_port)
    try:
        for folder, expected in ((series, [0, 0, 0]), (tmp_path / "copy", [0, 0, 0x0111])):
            assoc, datasets = open_association(sorted(folder.iterdir()), listen_port)
            assert [assoc.send_c_store(dataset).Status for dataset in datasets] == expected
            assoc.release()
        time.sleep(2.0)                                       # well past the idle time
    finally:
        node.stop(grace_s=1)
    listed = status(tmp_path / "storage")
    [line] = [line for line in listed.splitlines() if copy in line]
    original = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    assert "incomplete" in line and f"stored already in series {original}" in listed, listed
    assert not (tmp_path / "storage" / "results" / f"{copy}.dcm").exists()
    result = CliRunner().invoke(main, ["listen", "--storage", str(tmp_path / "storage"), "--retry", copy])
    assert result.exit_code == 0 and "(2 instance(s))" in result.output and "given up" in result.output, result.output


def test_a_destination_down_at_first_gets_the_seg_once_up_and_a_killed_listener_finishes_after_a_restart(
        bone, series, tmp_path):
    listen_port, pacs_port = free_ports(2)
    storage = tmp_path / "storage"
    listener = start_listener(bone, storage, listen_port, pacs_port, idle=60)          # a series it waits on
    read_until(listener, "listening:")
    assert send(series, listen_port).returncode == 0
    os.killpg(listener.pid, signal.SIGKILL)                        # killed before the series is complete
    listener.wait()
    assert "receiving" in status(storage)
    listener = start_listener(bone, storage, listen_port, pacs_port, idle=1)    # restarted; the PACS is down
    pacs = None
    try:
        read_until(listener, "step=delivery-failed")
        assert "processed" in status(storage)
        pacs = start_storescp(tmp_path / "pacs", pacs_port)
        [seg_path] = wait_for_segs(tmp_path / "pacs", 1)
    finally:
        printed = stop(listener)
        if pacs is not None:
            stop(pacs)
    assert "step=delivered to=PACS attempts=" in printed
    import pydicom

    seg = pydicom.dcmread(seg_path)
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.iterdir()}
    assert "delivered" in status(storage)


def test_a_listener_killed_while_an_association_sends_finds_the_series_incomplete_until_it_is_sent_again(
        bone, series, tmp_path):
    import pydicom

    listen_port, pacs_port = free_ports(2)
    storage = tmp_path / "storage"
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    listener = start_listener(bone, storage, listen_port, pacs_port)
    try:
        read_until(listener, "listening:")
        assoc, datasets = open_association(sorted(series.iterdir())[:2], listen_port)
        assert all(assoc.send_c_store(dataset).Status == 0 for dataset in datasets)
        os.killpg(listener.pid, signal.SIGKILL)                           # mid-series, the association open
        listener.wait()
        assoc.abort()
        listener = start_listener(bone, storage, listen_port, pacs_port)
        read_until(listener, "step=incomplete instances=2 reason=the node stopped while an association")
        time.sleep(2.5)                                                    # past the idle time: still waiting
        assert "incomplete" in status(storage) and not list((tmp_path / "pacs").glob("SG*"))
        sent = send(series, listen_port)
        assert sent.returncode == 0, stop(listener) + sent.stdout + sent.stderr        # the whole series again
        [seg_path] = wait_for_segs(tmp_path / "pacs", 1)
    finally:
        stop(listener)
        stop(pacs)
    assert pydicom.dcmread(seg_path).NumberOfFrames == 3
    assert "delivered" in status(storage)


def test_two_studies_sent_at_once_one_of_them_jpeg_2000_each_come_back_to_their_own_study(
        bone, series, data_dir, tmp_path):
    import pydicom
    from pydicom.uid import generate_uid

    second, study = tmp_path / "second", generate_uid()   # the TotalSegmentator CT, JPEG 2000, given the UIDs it lacks
    other = copy_series(data_dir / "dicom" / "totalseg_ct_series", second, study_uid=study, sop_from_meta=True)
    listener, pacs, _, listen_port = start_node(bone, tmp_path)
    try:
        read_until(listener, "listening:")
        senders = [subprocess.Popen([dcmtk("storescu"), *options, "-aet", calling, "-aec", "SEGMENTER", "127.0.0.1",
                                     str(listen_port), *map(str, sorted(folder.iterdir()))])
                   for folder, calling, options in ((series, "CTSCANNER", ()), (second, "OTHERCT", ("-xv",)))]
        assert [sender.wait(timeout=120) for sender in senders] == [0, 0]
        segs = wait_for_segs(tmp_path / "pacs", 2)
    finally:
        stop(listener)
        stop(pacs)
    found = {(ds.StudyInstanceUID, ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
             for ds in map(pydicom.dcmread, segs)}
    first = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)
    assert found == {(first.StudyInstanceUID, first.SeriesInstanceUID), (study, other)}
    from runtime.io import read_label, read_scan

    [compressed] = [path for path in segs if pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID == study]
    CliRunner().invoke(main, ["predict", str(second), "--model", str(bone), "--output", str(tmp_path / "l.nii.gz")])
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "l.nii.gz")))
    assert np.count_nonzero(expected) > 1000
    np.testing.assert_array_equal(read_label(compressed, read_scan([second])), expected)


def test_the_commands_of_the_pacs_docs_run_as_written_and_a_valid_seg_arrives(data_dir, tmp_path):
    import re

    from tests.conftest import REPO

    text = (REPO / "docs" / "pacs.md").read_text(encoding="utf-8")
    script = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    listen_port, pacs_port = free_ports(2)
    for tool in ("storescp", "storescu"):
        assert f"/usr/bin/{tool}" in script
        script = script.replace(f"/usr/bin/{tool}", dcmtk(tool))
    script = (script.replace("11112", str(listen_port)).replace("4242", str(pacs_port))
              .replace("model_repository/", f"{REPO}/model_repository/").replace("../shared/data", str(data_dir)))
    (tmp_path / "run.sh").write_text(script)
    environment = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    with open(tmp_path / "run.log", "w") as log:           # a file: the jobs it leaves running keep a pipe open
        process = subprocess.Popen(["bash", "-e", str(tmp_path / "run.sh")], cwd=tmp_path, env=environment,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            process.wait(timeout=180)
        finally:
            os.killpg(process.pid, signal.SIGTERM)                 # the listener and storescp the script started
    printed = (tmp_path / "run.log").read_text()
    assert process.returncode == 0, printed
    assert re.search(r"\bdelivered\s+1\b", printed), printed
    assert len(list((tmp_path / "received").glob("SG*"))) == 1, printed
    assert "step=processed seconds=" in printed and printed.count(" found=none\n") == 1, printed
    assert not [line for line in printed.splitlines() if line.startswith("Error")], printed


def test_a_report_is_skipped_an_instance_without_uids_or_pixels_refused_a_two_patient_series_failed_the_rest_go_through(
        bone, series, tmp_path):
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    report = pydicom.Dataset()                                  # a Basic Text SR: no pixel data
    report.SOPClassUID, report.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", generate_uid()
    report.StudyInstanceUID, report.SeriesInstanceUID, report.Modality = generate_uid(), generate_uid(), "SR"
    report.file_meta = FileMetaDataset()
    report.file_meta.MediaStorageSOPClassUID, report.file_meta.MediaStorageSOPInstanceUID = (
        report.SOPClassUID, report.SOPInstanceUID)
    report.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    report.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    anonymized = tmp_path / "anonymized.dcm"                   # a slice whose Study Instance UID was emptied
    slice_ = pydicom.dcmread(sorted(series.iterdir())[0])
    slice_.StudyInstanceUID, slice_.SOPInstanceUID = "", generate_uid()
    slice_.file_meta.MediaStorageSOPInstanceUID = slice_.SOPInstanceUID
    slice_.save_as(anonymized)
    scout = tmp_path / "scout.dcm"                               # a CT localizer: one projection, no volume
    slice_ = pydicom.dcmread(sorted(series.iterdir())[0])
    slice_.SeriesInstanceUID, slice_.SOPInstanceUID = generate_uid(), generate_uid()
    slice_.file_meta.MediaStorageSOPInstanceUID = slice_.SOPInstanceUID
    slice_.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    slice_.save_as(scout)

    def halve_second(index: int, dataset: pydicom.Dataset) -> None:
        if index == 1:
            dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]

    short = tmp_path / "short"                                    # a series one of whose slices lost half its pixels
    short_series = copy_series(series, short, edit=halve_second)

    def strip_second(index: int, dataset: pydicom.Dataset) -> None:
        if index == 1:
            del dataset.PixelData

    stripped_series = copy_series(series, tmp_path / "stripped", edit=strip_second)   # a slice's Pixel Data lost

    def two_patients(index: int, dataset: pydicom.Dataset) -> None:
        dataset.PatientID = "TRAUMA-0001" if index == 0 else "123456"

    mixed_series = copy_series(series, tmp_path / "mixed", edit=two_patients)
    listener, pacs, _, listen_port = start_node(bone, tmp_path)
    try:
        read_until(listener, "listening:")
        for files in ([tmp_path / "report.dcm"], [anonymized], [scout]):
            subprocess.run([dcmtk("storescu"), "-aet", "CTSCANNER", "-aec", "SEGMENTER", "127.0.0.1",
                            str(listen_port), *map(str, files)], capture_output=True, timeout=120)
        assert send(short, listen_port).returncode != 0                 # storescu saw the refusal
        assert send(tmp_path / "stripped", listen_port).returncode != 0
        assert send(tmp_path / "mixed", listen_port).returncode == 0
        assert send(series, listen_port).returncode == 0
        wait_for_segs(tmp_path / "pacs", 1)
        deadline = time.monotonic() + WAIT_S
        while "failed" not in status(tmp_path / "storage") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        printed = stop(listener)
        stop(pacs)
    assert f"series={short_series} step=incomplete from=CTSCANNER reason=instance " in printed, printed
    assert "fewer than the 524,288 its header promises" in printed
    assert f"series={stripped_series} step=incomplete from=CTSCANNER reason=instance " in printed, printed
    assert "holds no pixel data, which an instance of CT Image Storage must" in printed
    assert f"series={mixed_series} step=failed reason=" in printed and "2 different PatientID" in printed, printed
    assert "step=skipped from=CTSCANNER reason=not an image" in printed, printed
    assert "step=skipped from=CTSCANNER reason=a localizer (a scout projection)" in printed, printed
    assert "step=refused from=CTSCANNER reason=Study Instance UID '' is not a DICOM UID" in printed, printed
    assert "step=delivered" in printed and "Traceback" not in printed
    listed = status(tmp_path / "storage")
    assert [listed.count(word) for word in ("delivered", "failed", "incomplete")] == [1, 1, 2], listed
    assert len(listed.strip().splitlines()) == 5
    assert "fewer than the 524,288 its header promises" in listed            # the reason, past the folder's path


def test_a_failed_series_mended_in_the_storage_folder_is_segmented_again_by_retry(bone, series, tmp_path):
    import pydicom

    def two_patients(index: int, dataset: pydicom.Dataset) -> None:
        dataset.PatientID = "TRAUMA-0001" if index == 0 else "123456"

    mixed = copy_series(series, tmp_path / "mixed", edit=two_patients)
    storage = tmp_path / "storage"
    listener, pacs, _, listen_port = start_node(bone, tmp_path)
    try:
        read_until(listener, "listening:")
        assert send(tmp_path / "mixed", listen_port).returncode == 0
        failed = read_until(listener, f"series={mixed} step=failed").splitlines()[-1]
        assert "--output" not in failed and failed.endswith("export the series again from the PACS."), failed
        listed = status(storage)                  # its folder, named by the line already, is not said twice
        assert "the instances of the series hold 2 different PatientID" in listed, listed
        result = CliRunner().invoke(main, ["listen", "--storage", str(storage), "--retry", mixed])
        assert result.exit_code == 0, result.output
        assert "2 different PatientID" in read_until(listener, f"series={mixed} step=failed")   # not mended
        stray = next(path for path in (tmp_path / "mixed").iterdir()
                     if pydicom.dcmread(path, stop_before_pixels=True).PatientID == "TRAUMA-0001")
        (storage / "series" / mixed / f"{pydicom.dcmread(stray).SOPInstanceUID}.dcm").unlink()   # the mend
        result = CliRunner().invoke(main, ["listen", "--storage", str(storage), "--retry", mixed])
        assert result.exit_code == 0 and f"series {mixed} (2 instance(s)) is segmented again" in result.output
        wait_for_segs(tmp_path / "pacs", 1)
    finally:
        printed = stop(listener)
        stop(pacs)
    assert f"series={mixed} step=delivered" in printed, printed
    from tests.modelkit import run_failing

    run_failing(["listen", "--storage", str(storage), "--retry", mixed], "the series is delivered",
                "only a failed or incomplete one is retried")
    run_failing(["listen", "--storage", str(storage), "--retry", "1.2.3"], "no such series")
    (tmp_path / "bare" / "series").mkdir(parents=True)
    run_failing(["listen", "--storage", str(tmp_path / "bare"), "--retry", "../../etc"], "is not a DICOM UID")
    assert [p.name for p in (tmp_path / "bare").iterdir()] == ["series"]          # nothing added
    from runtime.pacs.storage import SeriesState, Storage

    Storage(storage).save(SeriesState(series_uid="1.2.4", study_uid="1.2", calling_ae="CTSCANNER",
                                      state="incomplete", missing="1.2.4.1"))     # its one instance refused
    run_failing(["listen", "--storage", str(storage), "--retry", "1.2.4"], "holds no instance to segment")


def open_association(files: list[Path], port: int) -> tuple:
    """An association from CTSCANNER to the node, opened as a modality opens one (pynetdicom), and
    the data sets of `files` to send over it."""
    import pydicom
    from pynetdicom import AE

    client = AE(ae_title="CTSCANNER")
    datasets = [pydicom.dcmread(path) for path in files]
    client.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
    assoc = client.associate("127.0.0.1", port, ae_title="SEGMENTER")
    assert assoc.is_established
    return assoc, datasets


def _abort_after(files: list[Path], port: int) -> None:
    """Send `files` in one association as a modality would, then abort it."""
    assoc, datasets = open_association(files, port)
    for dataset in datasets:
        assert assoc.send_c_store(dataset).Status == 0
    assoc.abort()


def test_an_aborted_series_waits_for_its_resend_an_unchanged_resend_makes_no_second_seg_and_a_grown_one_a_revision(
        bone, series, tmp_path):
    import pydicom

    listener, pacs, storage, listen_port = start_node(bone, tmp_path)
    copy_series(series, tmp_path / "a")
    copy_series(series, tmp_path / "b")
    files_a, files_b = sorted((tmp_path / "a").iterdir()), sorted((tmp_path / "b").iterdir())
    try:
        read_until(listener, "listening:")
        _abort_after(files_a[:2], listen_port)
        read_until(listener, "step=incomplete instances=2")
        time.sleep(1.6)                                                   # past the idle time: still waiting
        assert "incomplete" in status(storage) and not list((tmp_path / "pacs").glob("SG*"))
        assert send(tmp_path / "a", listen_port).returncode == 0          # the whole series again
        [first] = wait_for_segs(tmp_path / "pacs", 1)
        assert send(tmp_path / "a", listen_port).returncode == 0          # the same instances once more
        read_until(listener, "step=resent")
        time.sleep(3.0)                         # an idle time, a model run and a SEG's writing, with room to spare
        assert len(list((tmp_path / "pacs").glob("SG*"))) == 1
        only_two = tmp_path / "b2"
        only_two.mkdir()
        for path in files_b[:2]:
            shutil.copy(path, only_two / path.name)
        assert send(only_two, listen_port).returncode == 0                # released: complete as far as we know
        wait_for_segs(tmp_path / "pacs", 2)
        assert send(tmp_path / "b", listen_port).returncode == 0          # it grows by one instance
        segs = wait_for_segs(tmp_path / "pacs", 3)
    finally:
        printed = stop(listener)
        stop(pacs)
    made = {Path(p).name: pydicom.dcmread(p) for p in segs}
    assert pydicom.dcmread(first).NumberOfFrames == 3
    by_series = sorted((int(d.SeriesNumber), int(d.NumberOfFrames), str(d.SeriesDescription)) for d in made.values())
    assert [(number, frames) for number, frames, _ in by_series] == [(9001, 2), (9001, 3), (9002, 3)], by_series
    assert by_series[-1][2].endswith("revision 2")
    assert "revision=2" in printed, printed


def test_a_stopped_listener_lets_an_open_association_end_before_it_says_stopped(bone, series, tmp_path):
    listen_port, pacs_port = free_ports(2)
    storage = tmp_path / "storage"
    listener = start_listener(bone, storage, listen_port, pacs_port, idle=60)
    try:
        read_until(listener, "listening:")
        assoc, datasets = open_association(sorted(series.iterdir()), listen_port)
        assert assoc.send_c_store(datasets[0]).Status == 0
        os.killpg(listener.pid, signal.SIGTERM)
        read_until(listener, "step=stopping open_associations=1")
        for dataset in datasets[1:]:                                  # still taken while the association ends
            assert assoc.send_c_store(dataset).Status == 0
        assoc.release()
        printed, _ = listener.communicate(timeout=WAIT_S)             # it ends by itself: no second signal
    finally:
        stop(listener)
    assert listener.returncode == 0 and printed.strip().endswith("stopped"), printed
    assert "receiving" in status(storage) and "incomplete" not in status(storage)
    assert len(list((storage / "series").glob("*/*.dcm"))) == 3


def test_an_association_left_idle_is_closed_by_the_node_and_its_series_taken_as_sent(bone, series, tmp_path):
    """A sender that keeps its association open after the last instance is cut off by the node's
    network timeout (an abort, which pynetdicom sends): that is no aborted send, and the series is
    segmented and delivered."""
    from runtime.pacs.listener import Destination, Listener
    from runtime.pacs.storage import Storage
    from runtime.predict import load_model

    listen_port, pacs_port = free_ports(2)
    pacs = start_storescp(tmp_path / "pacs", pacs_port)
    node = Listener(load_model(bone, device="cpu"), Storage(tmp_path / "storage"), "SEGMENTER", ["CTSCANNER"],
                    Destination("PACS", "127.0.0.1", pacs_port), idle_s=0.5, association_idle_s=1.0)
    try:
        node.start("127.0.0.1", listen_port)
        assoc, datasets = open_association(sorted(series.iterdir()), listen_port)
        assert all(assoc.send_c_store(dataset).Status == 0 for dataset in datasets)
        deadline = time.monotonic() + 10
        while assoc.is_alive() and time.monotonic() < deadline:              # left open: the node closes it
            time.sleep(0.1)
        assert assoc.is_aborted
        wait_for_segs(tmp_path / "pacs", 1)
    finally:
        node.stop(grace_s=1)
        stop(pacs)
    assert "delivered" in status(tmp_path / "storage") and "incomplete" not in status(tmp_path / "storage")


def test_a_series_cut_short_stays_incomplete_while_an_association_open_at_the_cut_goes_on_sending_it(
        bone, series, tmp_path):
    """Two associations send one series; one is aborted after its first instance. The other, open
    at that moment, sends the rest and releases: the instances the aborted one never sent may be
    missing, so the series stays incomplete (no SEG of part of it) until a new association sends it."""
    import pydicom

    listener, pacs, storage, listen_port = start_node(bone, tmp_path)
    copy_series(series, tmp_path / "a")
    files = sorted((tmp_path / "a").iterdir())
    try:
        read_until(listener, "listening:")
        other, datasets = open_association(files, listen_port)
        cut, _ = open_association(files, listen_port)
        assert cut.send_c_store(datasets[0]).Status == 0
        cut.abort()
        read_until(listener, "step=incomplete instances=1")
        assert all(other.send_c_store(dataset).Status == 0 for dataset in datasets[1:])
        other.release()
        read_until(listener, "this association was open when an abort cut the series short")
        time.sleep(1.6)                                                   # past the idle time: still waiting
        assert "incomplete" in status(storage) and not list((tmp_path / "pacs").glob("SG*"))
        assert send(tmp_path / "a", listen_port).returncode == 0          # sent again, in a new association
        [seg] = wait_for_segs(tmp_path / "pacs", 1)
    finally:
        printed = stop(listener)
        stop(pacs)
    assert pydicom.dcmread(seg).NumberOfFrames == 3 and "Traceback" not in printed, printed


def test_a_seg_that_cannot_be_written_into_the_storage_folder_is_made_again_once_it_can(bone, series, tmp_path):
    """The storage folder's results cannot take the SEG (a full or read-only disk; here a file where
    the folder was): the series is no failure of its own, so it waits and is made again, after a
    back-off, once the folder takes it."""
    listener, pacs, storage, listen_port = start_node(bone, tmp_path)
    try:
        read_until(listener, "listening:")
        (storage / "results").rmdir()
        (storage / "results").write_text("in the way")
        assert send(series, listen_port).returncode == 0
        failed = read_until(listener, "step=write-failed attempts=1 retry_in=1s").splitlines()[-1]
        assert f"reason=cannot write the result in {storage / 'results'} (Not a directory); free space" in failed
        (storage / "results").unlink()
        (storage / "results").mkdir()
        wait_for_segs(tmp_path / "pacs", 1)
    finally:
        printed = stop(listener)
        stop(pacs)
    assert "step=failed" not in printed and "Traceback" not in printed, printed
    assert "delivered" in status(storage)


@pytest.mark.parametrize(("code", "meaning"), [(0xA701, "out of resources"), (0xA900, "does not match the SOP class"),
                                              (0xC123, "cannot understand"), (0x0110, "processing failure"),
                                              (0x0122, "SOP class not supported"), (0x0124, "not authorized"),
                                              (0xFE00, "")])
def test_a_failure_status_is_said_with_what_dicom_says_it_means(code, meaning):
    from runtime.pacs.listener import _meaning

    assert (meaning in _meaning(code)) and bool(_meaning(code)) == bool(meaning)


def test_a_series_whose_state_cannot_be_saved_after_a_failed_write_is_named_and_waits(bone, tmp_path, caplog,
                                                                                       monkeypatch):
    """The disk that took no result takes no state either: the series' own line says both, and the
    error reaches the worker's back-off (its state still says processing, to be made again)."""
    from runtime.errors import OutputError
    from runtime.pacs.listener import Destination, Listener
    from runtime.pacs.storage import SeriesState, Storage
    from runtime.predict import load_model

    storage = Storage(tmp_path / "storage")
    storage.save(SeriesState(series_uid="1.2.3", study_uid="1.2", calling_ae="CTSCANNER", state="processing"))
    node = Listener(load_model(bone, device="cpu"), storage, "SEGMENTER", ["CTSCANNER"],
                    Destination("PACS", "127.0.0.1", 104))

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage, "update", full)
    with caplog.at_level("ERROR", logger="runtime.listen"), pytest.raises(OutputError, match="series 1.2.3"):
        node._retry_later(storage.state("1.2.3"), "cannot write the result")
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("study=1.2 series=1.2.3 step=write-failed attempts=1 reason=cannot write the result; its "
                           "state could not be saved either"), line
    assert storage.state("1.2.3").state == "processing"


def test_a_failed_write_is_said_in_one_line_though_pydicom_wraps_it_with_a_traceback():
    from runtime.pacs.listener import _os_reason

    wrapped = OSError("With tag (7FE0,0010) got exception: [Errno 28] No space left on device\nTraceback (most "
                      "recent call last):\n  File \"pydicom/filewriter.py\", line 1, in write_data_element\n")
    assert _os_reason(wrapped) == "[Errno 28] No space left on device"
    assert _os_reason(OSError(28, "No space left on device")) == "No space left on device"
    assert _os_reason(OSError("first\nsecond")) == "first"


@pytest.fixture()
def black_hole():
    """A destination that accepts every connection and never answers (a hung PACS): its port,
    and the connections it holds."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    held: list[socket.socket] = []
    done = threading.Event()

    def hold() -> None:
        while not done.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield server.getsockname()[1], held
    done.set()
    thread.join(timeout=5)
    for connection in [*held, server]:
        connection.close()


def test_each_failed_delivery_says_why_in_words_an_integrator_can_act_on(bone, series, tmp_path):
    """A destination that rejects the node's call (a wrong AE title in --send-to), one that stores
    CT images but not segmentations, a port nothing listens on, a host no one knows, one out of
    resources and one that aborts the association (dcmtk's storescp --abort-after): each attempt's
    reason names the cause."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    from runtime.pacs.listener import Destination, Listener
    from runtime.pacs.storage import Storage
    from runtime.predict import load_model

    seg, sr = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    result = CliRunner().invoke(main, ["predict", str(series), "--model", str(bone), "--dicom-seg", str(seg),
                                       "--dicom-sr", str(sr)])
    assert result.exit_code == 0, result.output
    from pynetdicom.sop_class import SegmentationStorage

    pacs_port, segs_port, dead_port, full_port, abort_port = free_ports(5)
    servers = []
    for port, stored, answer in ((pacs_port, CTImageStorage, 0), (segs_port, SegmentationStorage, 0),
                                 (full_port, SegmentationStorage, 0xA700)):
        pacs = AE(ae_title="PACS")
        pacs.require_called_aet = True
        pacs.add_supported_context(stored)
        servers.append(pacs.start_server(("127.0.0.1", port), block=False,
                                         evt_handlers=[(evt.EVT_C_STORE, lambda e, code=answer: code)]))
    (tmp_path / "aborts").mkdir()
    aborting = subprocess.Popen([dcmtk("storescp"), "--aetitle", "PACS", "--abort-after", "--output-directory",
                                 str(tmp_path / "aborts"), str(abort_port)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.STDOUT, start_new_session=True)
    model = load_model(bone, device="cpu")
    try:
        reasons = {}
        for name, destination, sent in (
                ("wrong title", Destination("ARCHIVE", "127.0.0.1", pacs_port), [seg]),
                ("no segmentations", Destination("PACS", "127.0.0.1", pacs_port), [seg, sr]),
                ("no reports", Destination("PACS", "127.0.0.1", segs_port), [seg, sr]),
                ("nothing listens", Destination("PACS", "127.0.0.1", dead_port), [seg]),
                ("unknown host", Destination("PACS", "no-such-pacs.invalid", pacs_port), [seg]),
                ("full", Destination("PACS", "127.0.0.1", full_port), [seg]),
                ("aborts", Destination("PACS", "127.0.0.1", abort_port), [seg])):
            node = Listener(model, Storage(tmp_path / name), "SEGMENTER", ["CTSCANNER"], destination)
            started = time.monotonic()
            reasons[name] = node._send(sent)
            assert time.monotonic() - started < 20, name            # an abort is no 30 s wait
    finally:
        for server in servers:
            server.shutdown()
        stop(aborting)
    assert reasons["wrong title"] == (f"ARCHIVE@127.0.0.1:{pacs_port} rejected the association (Called AE title not "
                                      "recognised); check --send-to's AE title and that the destination knows this "
                                      "node's (--ae-title)")
    assert reasons["no segmentations"] == (f"PACS@127.0.0.1:{pacs_port} accepted the association but not "
                                           "Segmentation Storage objects; have it store them")      # --report: no help
    assert reasons["no reports"] == (f"PACS@127.0.0.1:{segs_port} accepted the association but not Comprehensive SR "
                                     "Storage objects; have it store them (or leave --report out)")
    assert reasons["nothing listens"].startswith(f"cannot connect to PACS@127.0.0.1:{dead_port} (refused")
    assert reasons["unknown host"].startswith("the destination's host 'no-such-pacs.invalid' is not known")
    assert reasons["full"] == (f"PACS@127.0.0.1:{full_port} answered the C-STORE with status 0xA700 (out of "
                               "resources: its disk is full or it is overloaded; it is sent again after a back-off)")
    assert reasons["aborts"].startswith(f"PACS@127.0.0.1:{abort_port} aborted the association before it answered "
                                        "the C-STORE"), reasons["aborts"]


def test_a_hung_destination_holds_up_no_segmentation_and_the_node_stops_at_once(bone, series, tmp_path, black_hole):
    """The SEG of a first series waits on a destination that accepts the connection and never
    answers; a second series sent meanwhile is segmented within seconds all the same, and a
    SIGTERM ends the node without waiting for the hung delivery: both SEGs stay, to be sent at the
    next start."""
    import pydicom

    hole_port, held = black_hole
    first = pydicom.dcmread(sorted(series.iterdir())[0], stop_before_pixels=True).SeriesInstanceUID
    second = copy_series(series, tmp_path / "b")
    listen_port = free_ports(1)[0]
    storage = tmp_path / "storage"
    listener = start_listener(bone, storage, listen_port, hole_port)
    try:
        read_until(listener, "listening:")
        assert send(series, listen_port).returncode == 0
        read_until(listener, f"series={first} step=processed")
        deadline = time.monotonic() + 10
        while not held and time.monotonic() < deadline:                # the delivery is under way, and hangs
            time.sleep(0.1)
        assert held
        sent = time.monotonic()
        assert send(tmp_path / "b", listen_port).returncode == 0
        printed = read_until(listener, f"series={second} step=processed", timeout=20)
        assert time.monotonic() - sent < 10, printed                   # an idle second and a model run
        assert "step=delivery" not in printed, printed                 # the first delivery still hangs
        assert (storage / "results" / f"{second}.dcm").is_file()
        stopping = time.monotonic()
        os.killpg(listener.pid, signal.SIGTERM)
        rest, _ = listener.communicate(timeout=WAIT_S)
        assert time.monotonic() - stopping < 10, rest
    finally:
        stop(listener)
    assert listener.returncode == 0 and rest.strip().endswith("stopped"), rest
    assert f"series={first} step=delivery-interrupted" in rest, rest
    assert status(storage).count("processed") == 2


def test_a_series_sent_an_instance_per_association_waits_for_the_instance_it_refused(bone, series, tmp_path):
    """Many senders open an association per image. One image arrives cut short and is refused; the
    others, each in an association of its own begun after, do not make the series whole: it waits
    for that instance, and once it comes intact the SEG holds every slice."""
    import pydicom

    def cut_last(index: int, dataset: pydicom.Dataset) -> None:
        if index == 2:
            dataset.PixelData = dataset.PixelData[: len(dataset.PixelData) // 2]

    copy_series(series, tmp_path / "a", edit=cut_last)
    files = sorted((tmp_path / "a").iterdir())
    listener, pacs, storage, listen_port = start_node(bone, tmp_path)
    try:
        read_until(listener, "listening:")
        for path in (files[2], files[0], files[1]):                       # one association each
            assoc, [dataset] = open_association([path], listen_port)
            assert assoc.send_c_store(dataset).Status == (0xC000 if path == files[2] else 0)
            assoc.release()
        read_until(listener, "it waits for the instance(s) refused before (1)")
        time.sleep(1.6)                                                   # past the idle time: still waiting
        assert "incomplete" in status(storage) and not list((tmp_path / "pacs").glob("SG*"))
        whole = pydicom.dcmread(sorted(series.iterdir())[2])
        whole.SeriesInstanceUID, whole.SOPInstanceUID = dataset.SeriesInstanceUID, pydicom.dcmread(
            files[2]).SOPInstanceUID
        whole.file_meta.MediaStorageSOPInstanceUID = whole.SOPInstanceUID
        whole.save_as(tmp_path / "intact.dcm")
        assoc, [dataset] = open_association([tmp_path / "intact.dcm"], listen_port)
        assert assoc.send_c_store(dataset).Status == 0
        assoc.release()
        [seg] = wait_for_segs(tmp_path / "pacs", 1)
    finally:
        printed = stop(listener)
        stop(pacs)
    assert pydicom.dcmread(seg).NumberOfFrames == 3 and "Traceback" not in printed, printed


def test_an_instance_of_any_image_storage_class_without_pixel_data_is_refused_and_a_report_skipped():
    """Projection X-ray classes ('... Image Storage - For Presentation') and US volumes are image
    classes too: one that lost its pixel data is refused, not skipped as 'not an image'."""
    import pydicom

    from runtime.pacs.listener import _not_segmented, _pixel_problem

    for uid, name in (("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
                      ("1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image Storage - For Presentation"),
                      ("1.2.840.10008.5.1.4.1.1.6.2", "Enhanced US Volume Storage")):
        dataset = pydicom.Dataset()
        dataset.SOPClassUID = uid
        assert _not_segmented(dataset) is None
        assert _pixel_problem(dataset).startswith(f"holds no pixel data, which an instance of {name} must")
    report = pydicom.Dataset()
    report.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    assert _not_segmented(report) == "not an image"
