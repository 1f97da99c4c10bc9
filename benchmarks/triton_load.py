"""Triton under load: `runtime serve` on 127.0.0.1, many concurrent clients, good and bad requests
mixed, every answer checked; latency percentiles, throughput, and served time against local time.

    python benchmarks/triton_load.py                         # 8 clients, 400 requests (about 2 minutes on 2 cores)
    python benchmarks/triton_load.py --clients 16 --requests 800

It needs the test setup (`pip install -e '.[dev]'` and `pip install --no-deps nvidia-pytriton==0.7.0`).
The model is the embedded demo (model_repository/demo_bright_structures: resampling, z-score,
a 3D sliding window), on a 48 x 96 x 96 scan of 2.5 x 1.25 x 1.25 mm. One request in eight is
bad, in turn: two channels (wrong shape), float64 voxels (wrong datatype), no SPACING (the model
resamples), version 7 (not served). Every good answer must equal the local runtime's labels and
every bad one must be refused (HTTP 400, or 404 for the version); a request lost or answered
wrongly stops the benchmark with an error.

Requests ask for LABELS only, as `runtime predict --output` does. Printed: the served latency of
one request at a time against the runtime's own time in process for the same scan and output
(target: at most 1.15x), then, with all clients at once, requests per second and
the latency percentiles p50, p95, p99 of good and bad requests. Last, a synthetic slide
(model_repository/demo_stain_regions) predicted in process on OpenVINO and through the server
(tiles cut and stitched here, each batch one WINDOWS request): the times and their ratio, and
whether the label maps are equal.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from runtime.predict import load_model  # noqa: E402
from runtime.triton import LABELS, predict_arrays  # noqa: E402
from tests.modelkit import blob_volume  # noqa: E402
from tests.tritonkit import free_ports, kill, read_until, start_serve  # noqa: E402
from window_bench.host import print_machine  # noqa: E402

MODEL = "demo_bright_structures"
SLIDE_MODEL = "demo_stain_regions"
SHAPE = (48, 96, 96)
SPACING = np.array([2.5, 1.25, 1.25], np.float32)
BAD_KINDS = ("two channels", "float64", "no SPACING", "version 7")


@dataclass(frozen=True)
class Outcome:
    good: bool
    ok: bool
    seconds: float
    detail: str


def request(client, image: np.ndarray, kind: str | None) -> tuple[float, object]:
    import tritonclient.http as http

    array, spacing, dtype, version = image, SPACING, "FP32", ""
    if kind == "two channels":
        array = np.concatenate([image, image])
    elif kind == "float64":
        array, dtype = image.astype(np.float64), "FP64"
    elif kind == "version 7":
        version = "7"
    inputs = []
    for name, value in (("IMAGE", array), ("SPACING", None if kind == "no SPACING" else spacing)):
        if value is None:
            continue
        tensor = http.InferInput(name, list(value.shape), dtype if name == "IMAGE" else "FP32")
        tensor.set_data_from_numpy(value, binary_data=True)
        inputs.append(tensor)
    started = time.perf_counter()
    try:
        answer = client.infer(MODEL, inputs, model_version=version, outputs=[http.InferRequestedOutput(LABELS)])
    except Exception as error:  # refused (the bad ones) or lost (a failure of the benchmark)
        return time.perf_counter() - started, error
    return time.perf_counter() - started, answer


def judge(kind: str | None, seconds: float, answer: object, expected: np.ndarray) -> Outcome:
    from tritonclient.utils import InferenceServerException

    if kind is None:
        ok = not isinstance(answer, Exception) and np.array_equal(answer.as_numpy(LABELS), expected)
        return Outcome(True, ok, seconds, "" if ok else f"good request answered {answer!r}")
    ok = isinstance(answer, InferenceServerException) and str(answer.status()) in ("400", "404")
    return Outcome(False, ok, seconds, "" if ok else f"bad request ({kind}) answered {answer!r}")


def percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    ordered = np.sort(values)
    pick = [float(np.percentile(ordered, q)) * 1000 for q in (50, 95, 99)]
    return f"p50 {pick[0]:7.1f} ms  p95 {pick[1]:7.1f} ms  p99 {pick[2]:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--single", type=int, default=10, help="requests one at a time, for the latency ratio")
    parser.add_argument("--slide-side", type=int, default=12000, help="the synthetic slide's longer side in pixels")
    parser.add_argument("--slide-repeats", type=int, default=3)
    args = parser.parse_args()
    print_machine()
    import tritonclient.http as http

    image = blob_volume(SHAPE)[np.newaxis]
    local = load_model(REPO / "model_repository" / MODEL, device="openvino")
    expected = predict_arrays(local, image, SPACING, requested=[LABELS])[LABELS]
    local_times = []
    for _ in range(args.single):
        started = time.perf_counter()
        predict_arrays(local, image, SPACING, requested=[LABELS])
        local_times.append(time.perf_counter() - started)
    ports = free_ports(3)
    server = start_serve(REPO / "model_repository", ports)
    try:
        read_until(server, "ready:")
        url = f"127.0.0.1:{ports[0]}"
        client = http.InferenceServerClient(url, network_timeout=300.0)
        request(client, image, None)                                   # warm-up
        single = []
        for _ in range(args.single):
            seconds, answer = request(client, image, None)
            outcome = judge(None, seconds, answer, expected)
            if not outcome.ok:
                raise SystemExit(outcome.detail)
            single.append(seconds)
        client.close()
        ratio = statistics.median(single) / statistics.median(local_times)
        print(f"one at a time: served {statistics.median(single) * 1000:.0f} ms, local in process "
              f"{statistics.median(local_times) * 1000:.0f} ms (medians of {args.single}); served/local {ratio:.3f} "
              f"(target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'})", flush=True)

        kinds = [BAD_KINDS[(i // 8) % len(BAD_KINDS)] if i % 8 == 7 else None for i in range(args.requests)]
        local_state = threading.local()

        def one(index: int) -> Outcome:
            if not hasattr(local_state, "client"):
                local_state.client = http.InferenceServerClient(url, network_timeout=300.0)
            seconds, answer = request(local_state.client, image, kinds[index])
            return judge(kinds[index], seconds, answer, expected)

        started = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            outcomes = list(pool.map(one, range(args.requests)))
        wall = time.perf_counter() - started
        wrong = [o.detail for o in outcomes if not o.ok]
        good = [o.seconds for o in outcomes if o.good]
        bad = [o.seconds for o in outcomes if not o.good]
        sent = [kind for kind in BAD_KINDS if kind in kinds]
        print(f"{args.clients} clients, {args.requests} requests ({len(good)} good, {len(bad)} bad: "
              f"{', '.join(sent) or 'none'}) in {wall:.1f} s: {args.requests / wall:.2f} requests/s, "
              f"{len(good) / wall:.2f} good/s", flush=True)
        print(f"  good: {percentiles(good)}", flush=True)
        print(f"  bad:  {percentiles(bad)}", flush=True)
        print(f"  answered correctly: {len(outcomes) - len(wrong)} of {len(outcomes)}; lost or wrong: {len(wrong)}",
              flush=True)
        if wrong:
            raise SystemExit("; ".join(wrong[:5]))
        slide_ratio(url, args.slide_side, args.slide_repeats)
    finally:
        kill(server)


def slide_ratio(url: str, side: int, repeats: int) -> None:
    """A slide predicted in process and through the server at `url`: median times and labels compared."""
    from runtime.predict import Model
    from runtime.slide.predict import predict_slide
    from runtime.triton.client import ServedBackend, ServedModel
    from tests.slidekit import tissue_image, write_slide

    work = Path(tempfile.mkdtemp(prefix="triton-slide-"))
    try:
        slide = write_slide(work / "slide.tif", tissue_image(side * 3 // 4, side)[0], levels=4)
        served = ServedModel(url, SLIDE_MODEL)
        manifest, _ = served.manifest()
        models = {"local": load_model(REPO / "model_repository" / SLIDE_MODEL, device="openvino"),
                  "served": Model(manifest, None, ServedBackend(served))}
        times, labels, map_shape = {}, {}, (0, 0, 0)
        for name, model in models.items():
            runs = []
            for _ in range(repeats + 1):                                        # the first run warms up
                started = time.perf_counter()
                result, scratch = predict_slide(model, slide, work_dir=work)
                runs.append(time.perf_counter() - started)
                labels[name] = result.labels((slice(0, result.shape[0]), slice(0, result.shape[1])))
                map_shape = result.array.shape
                shutil.rmtree(scratch)
            times[name] = statistics.median(runs[1:])
        served.close()
        ratio = times["served"] / times["local"]
        print(f"slide {side * 3 // 4} x {side} (map {map_shape[1]} x {map_shape[2]}): local {times['local']:.2f} s, "
              f"served {times['served']:.2f} s (medians of {repeats}); served/local {ratio:.3f}; label maps "
              f"{'equal' if np.array_equal(labels['local'], labels['served']) else 'DIFFERENT'}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
