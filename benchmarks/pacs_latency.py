"""Study to SEG through `runtime listen`, against `runtime predict` alone on the same series.

    python benchmarks/pacs_latency.py                 # the shared TotalSegmentator CT series, 3 runs
    python benchmarks/pacs_latency.py --network demo  # the embedded demo model instead of the benchmark UNet

The series (dicom/totalseg_ct_series of the shared test data, `$TEST_DATA_DIR` else ../shared/data:
20 slices of 512 x 512, JPEG 2000) has empty Study and Series Instance UIDs, which a SEG cannot do
without: every series sent is a copy under fresh Study, Series and SOP Instance UIDs (its SOP Class
UIDs from the file meta), since the listener refuses an instance whose UID it has stored with other
contents. dcmtk's storescu sends it to the listener, which segments it and sends the SEG to dcmtk's
storescp. The model is the radiology benchmark's MONAI 3D UNet (random weights, the compute of a
real segmentation network; exported once into benchmarks/out/, which needs torch and MONAI) on a 2 x
1.5 x 1.5 mm grid, or with `--network demo` the embedded demo model (one small filter: almost no
compute). Printed per run and as medians: the listener's work done in this process with the model
loaded beforehand (read the series, predict, write the SEG), the time from the first byte sent to
the SEG written at storescp, less the listener's idle wait, and the DICOM overhead (receive, store,
notice the series complete, send: that time less the in-process one) as a share of the in-process
time (target < 20 %). Needs dcmtk (apt-get install dcmtk) and the test setup.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from tests.dicomkit import copy_series, dcmtk_tool  # noqa: E402
from tests.tritonkit import free_ports, read_until  # noqa: E402
from window_bench.host import data_root, exit_on_sigterm, print_machine  # noqa: E402

DEMO = REPO / "model_repository" / "demo_bright_structures"
IDLE_S = 1.0


def unet_model(work: Path) -> Path:
    """The radiology benchmark's UNet (one channel) packaged for CT: resampled and z-scored."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from window_bench.networks import ensure_network, package

    _, onnx_path = ensure_network(REPO / "benchmarks" / "out", 1)
    steps = [{"resample": {"spacing": [2.0, 1.5, 1.5]}}, {"zscore": {"region": "nonzero"}}]
    return package(onnx_path, work / "models", "unet_ct", ["ct"], steps, batch_size=2)


def dcmtk(tool: str) -> str:
    found = dcmtk_tool(tool)
    if found is None:
        raise SystemExit(f"dcmtk's {tool} is not installed: apt-get install dcmtk")
    return found


def in_process(series: Path, work: Path, model: object) -> float:
    """Read, predict and write the SEG in this process, the model loaded beforehand (as the
    listener's is): the work the listener does for a series, without DICOM networking."""
    from runtime.io import read_scan
    from runtime.io.dicom import check_series
    from runtime.io.dicom_seg import source_instances, write_seg
    from runtime.predict import predict_scan

    started = time.perf_counter()
    scan = read_scan([series])
    files, _, _ = check_series(series)
    sources = source_instances(files, scan.reference)
    prediction = predict_scan(model, scan, overwrite=True)
    write_seg(work / "seg.dcm", prediction.labels_zyx, sources, model.manifest)
    seconds = time.perf_counter() - started
    (work / "seg.dcm").unlink()
    return seconds


def fresh_copy(source: Path, target: Path) -> Path:
    """The series at `source` copied to `target` under fresh Study, Series and SOP Instance UIDs,
    each instance's SOP Class UID taken from its file meta where its data set leaves it empty (as
    the shared series does): storescu needs it to send the instance."""
    from pydicom.uid import generate_uid

    def sop_class(index: int, dataset) -> None:
        dataset.SOPClassUID = dataset.get("SOPClassUID") or dataset.file_meta.MediaStorageSOPClassUID

    copy_series(source, target, study_uid=generate_uid(), edit=sop_class)
    return target


def output_tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Node:
    """One listener and one storescp, started once: the listener stays warm from series to series,
    as in a deployment. Each runs in a session of its own, ended by `stop`."""

    def __init__(self, work: Path, model_dir: Path) -> None:
        self.listen_port, pacs_port = free_ports(2)
        self.received = work / "received"
        self.received.mkdir()
        self.processes: list[subprocess.Popen] = []
        try:
            self.start(work, model_dir, pacs_port)
        except BaseException:
            self.stop()
            raise

    def start(self, work: Path, model_dir: Path, pacs_port: int) -> None:
        self.pacs = subprocess.Popen([dcmtk("storescp"), "--aetitle", "PACS", "--output-directory",
                                      str(self.received), str(pacs_port)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(self.pacs)
        self.listener = subprocess.Popen(
            [sys.executable, "-c", "from runtime.commands.cli import main; main()", "listen", "--model", str(model_dir),
             "--port", str(self.listen_port), "--send-to", f"PACS@127.0.0.1:{pacs_port}", "--allow", "CTSCANNER",
             "--storage", str(work / "storage"), "--idle", str(IDLE_S), "--device", "openvino"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.processes.append(self.listener)
        read_until(self.listener, "listening:")

    def send(self, series: Path) -> float:
        """Seconds from the first instance sent to the SEG written at storescp, less the idle wait."""
        before = len(list(self.received.glob("SG*")))
        started = time.perf_counter()
        done = subprocess.run([dcmtk("storescu"), "-xv", "-aet", "CTSCANNER", "-aec", "SEGMENTER", "127.0.0.1",
                               str(self.listen_port), *map(str, sorted(series.iterdir()))],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"storescu exited {done.returncode} sending {series.name}; its last lines:\n"
                             f"{output_tail(done.stdout + done.stderr)}")
        while len(list(self.received.glob("SG*"))) <= before:
            if time.perf_counter() - started > 300:
                raise SystemExit("no SEG arrived within 300 s")
            time.sleep(0.01)
        return time.perf_counter() - started - IDLE_S

    def stop(self) -> None:
        """End the listener and storescp, each with its whole session."""
        for process in reversed(self.processes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
        self.processes.clear()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--series", type=Path, default=data_root() / "dicom" / "totalseg_ct_series",
                        help="a DICOM CT series (default dicom/totalseg_ct_series of $TEST_DATA_DIR, "
                             "else ../shared/data)")
    parser.add_argument("--network", choices=("unet", "demo"), default="unet")
    args = parser.parse_args()
    print_machine()
    exit_on_sigterm()
    work = Path(tempfile.mkdtemp(prefix="pacs-latency-"))
    try:
        model_dir = unet_model(work) if args.network == "unet" else DEMO
        print(f"model: {model_dir.name}", flush=True)
        series = fresh_copy(args.series, work / "series")
        from runtime.predict import load_model

        model = load_model(model_dir, device="openvino")
        in_process(series, work, model)                                       # warm-up
        node = Node(work, model_dir)
        try:
            node.send(series)                                                 # the listener's warm-up
            local, listened = [], []
            for run in range(args.runs):
                fresh = fresh_copy(args.series, work / f"series{run}")       # a new series each time
                local.append(in_process(fresh, work, model))
                listened.append(node.send(fresh))
                print(f"run {run + 1}: read, predict and SEG in process {local[-1]:.2f} s; through the listener "
                      f"{listened[-1]:.2f} s (idle wait of {IDLE_S:g} s left out)", flush=True)
        finally:
            node.stop()
        inference, total = statistics.median(local), statistics.median(listened)
        overhead = total - inference
        print(f"{len(list(series.iterdir()))} instances; medians: in process {inference:.2f} s, through the listener "
              f"{total:.2f} s; DICOM overhead {overhead:.2f} s = {100 * overhead / inference:.0f} % of the in-process "
              f"time (target < 20 %: {'met' if overhead < 0.2 * inference else 'NOT met'})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
