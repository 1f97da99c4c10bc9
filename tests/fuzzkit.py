"""Fuzzing the scan readers: mutated copies of small valid files of every format the runtime reads,
each read by `runtime.io.read_scan` in a worker process, and every outcome counted.

A case ends one of four ways:
- refused: one project error (an `error:` line in the CLI);
- same: read, and the voxels, shape and spacing are those of the file before it was mutated;
- other: read, and different, after a mutation of the header (a header can be changed into another
  valid one) or of stored data that carry no checksum (raw NIfTI, NRRD and MetaImage data, DICOM,
  TIFF, BMP and JPEG pixels: damage inside a complete file of these formats cannot be told from
  data);
- broke: a traceback (an exception that is not a project error), a crash, a hang, or a wrong answer:
  a truncated file, or checksummed data (gzip, zlib, PNG) with damage, read into voxels that differ
  from the file's.

The worker runs under an address-space limit with a small memory budget, so an allocation the
readers did not bound before making it ends as a crash or MemoryError: broke.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
WORKER_BUDGET = "256M"
WORKER_ADDRESS_SPACE = 6 << 30
CASE_SECONDS = 30
_MARK = "fuzz-outcome "
HOSTILE = ("0", "-1", "-40", "1e-30", "1e30", "nan", "inf", "2147483647", "-2147483648", "65536", "3.5", "", "x")
_NIFTI_FIELDS = ((40, "h"), (42, "h"), (44, "h"), (46, "h"), (70, "h"), (72, "h"), (76, "f"), (80, "f"),
                 (84, "f"), (88, "f"), (108, "f"), (112, "f"), (116, "f"), (252, "h"), (254, "h"), (256, "f"),
                 (268, "f"), (280, "f"), (296, "f"), (312, "f"), (0, "i"))


@dataclass(frozen=True)
class Seed:
    """A valid file (or series folder) and where its stored data begin."""

    name: str
    path: Path
    data_start: int          # bytes of header before the stored data (0: all of it is data)
    checksummed: bool        # stored data carry a checksum that a reader must check
    text_header: bool


@dataclass(frozen=True)
class Case:
    index: int
    seed: Seed
    kind: str                # truncate, header, data, zero, append
    path: Path


def _volume() -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in (6, 20, 24)], indexing="ij")
    return (200 * np.exp(-sum(g ** 2 for g in grids) / 0.3) + 10).astype(np.int16)


def _write(path: Path, image: sitk.Image, compress: bool = False) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def _text_header_end(path: Path) -> int:
    data = path.read_bytes()
    if data.startswith(b"NRRD"):
        return data.index(b"\n\n") + 2
    return data.index(b"\n", data.index(b"ElementDataFile")) + 1


def _dicom_series(folder: Path, volume: np.ndarray) -> Path:
    folder.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    tags = {"0008|0060": "CT", "0020|000d": "1.2.826.0.1.3680043.2.1125.1", "0020|000e": "1.2.826.0.1.3680043.2.1125.2",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "0.8\\0.8", "0018|0050": "2"}
    for index, plane in enumerate(volume):
        image = sitk.GetImageFromArray(plane[np.newaxis])
        for tag, value in tags.items():
            image.SetMetaData(tag, value)
        image.SetMetaData("0020|0032", f"0\\0\\{2.0 * index}")
        image.SetMetaData("0020|0013", str(index + 1))
        image.SetMetaData("0008|0018", f"1.2.826.0.1.3680043.2.1125.3.{index + 1}")
        writer.SetFileName(str(folder / f"slice{index:02d}.dcm"))
        writer.Execute(image)
    return folder


def make_seeds(folder: Path) -> list[Seed]:
    """Small valid files of every format the runtime reads, in `folder`."""
    volume = _volume()
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.9, 2.0))
    image.SetOrigin((-10.0, 5.0, 3.0))
    image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    floats = sitk.Cast(image, sitk.sitkFloat32)
    plane = sitk.GetImageFromArray((volume[3] % 256).astype(np.uint8))
    seeds = [
        Seed("nii", _write(folder / "s.nii", image), 352, False, False),
        Seed("nii.gz", _write(folder / "s.nii.gz", image, True), 0, True, False),
        Seed("float.nii.gz", _write(folder / "f.nii.gz", floats, True), 0, True, False),
        Seed("nrrd", _write(folder / "s.nrrd", image), 0, False, True),
        Seed("gzip.nrrd", _write(folder / "z.nrrd", image, True), 0, True, True),
        Seed("mha", _write(folder / "s.mha", image), 0, False, True),
        Seed("zlib.mha", _write(folder / "z.mha", floats, True), 0, True, True),
        Seed("png", _write(folder / "s.png", plane), 8, True, False),
        Seed("tif", _write(folder / "s.tif", plane), 8, False, False),
        Seed("bmp", _write(folder / "s.bmp", plane), 54, False, False),
        Seed("jpg", _write(folder / "s.jpg", plane), 2, False, False),
        Seed("dicom", _dicom_series(folder / "series", volume), 0, False, False),
    ]
    return [Seed(s.name, s.path, _text_header_end(s.path), s.checksummed, True) if s.text_header else s
            for s in seeds]


def _target(seed: Seed) -> Path:
    """The file a mutation changes: the file itself, or one slice of a series."""
    return sorted(seed.path.iterdir())[1] if seed.path.is_dir() else seed.path


def _header_text(rng: np.random.Generator, data: bytes, end: int) -> bytes:
    lines = data[:end].split(b"\n")
    index = int(rng.integers(1, max(2, len(lines) - 2)))
    line = lines[index].decode("ascii", "replace")
    key, sep, value = line.partition("=" if "=" in line else ":")
    tokens = value.split() or [""]
    tokens[int(rng.integers(len(tokens)))] = str(rng.choice(HOSTILE))
    lines[index] = f"{key}{sep} {' '.join(tokens)}".encode() if sep else b""
    return b"\n".join(lines) + data[end:]


def _header_nifti(rng: np.random.Generator, data: bytes) -> bytes:
    import gzip
    import struct

    packed = data.startswith(b"\x1f\x8b")
    raw = bytearray(gzip.decompress(data) if packed else data)
    offset, fmt = _NIFTI_FIELDS[int(rng.integers(len(_NIFTI_FIELDS)))]
    text = str(rng.choice(HOSTILE[:11]))
    value = float(text) if fmt == "f" else int(max(-2 ** 15, min(2 ** 15 - 1, float(text)))) if fmt == "h" else \
        int(max(-2 ** 31, min(2 ** 31 - 1, float(text))))
    struct.pack_into("<" + fmt, raw, offset, value)
    return gzip.compress(bytes(raw)) if packed else bytes(raw)


def _flip_header(rng: np.random.Generator, data: bytes, end: int) -> bytes:
    damaged = bytearray(data)
    for _ in range(int(rng.integers(1, 4))):
        at = int(rng.integers(0, max(1, min(end or 64, len(data)))))
        damaged[at] = int(rng.integers(256))
    return bytes(damaged)


def _flip_data(rng: np.random.Generator, data: bytes, start: int) -> bytes:
    damaged = bytearray(data)
    start = start or min(16, len(data) // 2)
    at = int(rng.integers(start, len(data) - 1))
    count = int(rng.integers(1, 17))
    damaged[at:at + count] = bytes(255 - b for b in damaged[at:at + count])
    return bytes(damaged)


def _zero(rng: np.random.Generator, data: bytes, start: int) -> bytes:
    damaged = bytearray(data)
    at = int(rng.integers(start or 16, len(data) - 1))
    damaged[at:at + 512] = bytes(len(damaged[at:at + 512]))
    return bytes(damaged)


def mutate(rng: np.random.Generator, seed: Seed, kind: str, data: bytes) -> bytes:
    """One mutation of a file's bytes."""
    if kind == "truncate":
        return data[:int(rng.integers(0, len(data)))]
    if kind == "append":
        return data + rng.bytes(int(rng.integers(1, 300)))
    if kind == "data":
        return _flip_data(rng, data, seed.data_start)
    if kind == "zero":
        return _zero(rng, data, seed.data_start)
    if seed.text_header and rng.random() < 0.7:
        return _header_text(rng, data, seed.data_start)
    if seed.name.startswith(("nii", "float.nii")) and rng.random() < 0.7:
        return _header_nifti(rng, data)
    return _flip_header(rng, data, seed.data_start)


KINDS = ("truncate", "header", "header", "data", "zero", "append")


def make_cases(seeds: list[Seed], folder: Path, per_seed: int, seed: int = 0) -> list[Case]:
    """`per_seed` mutated copies of every seed, under `folder`."""
    import shutil

    rng = np.random.default_rng(seed)
    cases = []
    for item in seeds:
        source = _target(item)
        original = source.read_bytes()
        for number in range(per_seed):
            kind = KINDS[number % len(KINDS)]
            index = len(cases)
            place = folder / f"case{index:05d}"
            place.mkdir()
            if item.path.is_dir():
                path = place / item.path.name
                shutil.copytree(item.path, path)
                (path / source.name).write_bytes(mutate(rng, item, kind, original))
            else:
                path = place / item.path.name
                path.write_bytes(mutate(rng, item, kind, original))
            cases.append(Case(index, item, kind, path))
    return cases


def _limit() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (WORKER_ADDRESS_SPACE, WORKER_ADDRESS_SPACE))


def _outcome(path: str) -> list:
    from runtime.errors import MedflowError
    from runtime.io import read_scan

    try:
        scan = read_scan([path])
    except MedflowError as exc:
        return ["refused", str(exc)[:400]]
    except BaseException as exc:  # noqa: BLE001 - every other ending is what the fuzzing looks for
        return ["error", f"{type(exc).__name__}: {str(exc)[:400]}"]
    array = np.ascontiguousarray(scan.array_zyx)
    return ["read", list(array.shape), [round(s, 5) for s in scan.spacing_zyx],
            hashlib.sha256(array.tobytes()).hexdigest()]


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError(f"no answer within {CASE_SECONDS} s")


def worker() -> None:
    """Read every path given on stdin, one JSON line per path on stdout."""
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    signal.signal(signal.SIGALRM, _alarm)
    for line in sys.stdin:
        index, path = line.rstrip("\n").split("\t", 1)
        signal.alarm(CASE_SECONDS)
        result = _outcome(path)
        signal.alarm(0)
        print(_MARK + json.dumps([int(index), *result]), flush=True)


def read_all(paths: list[tuple[int, Path]]) -> dict[int, list]:
    """Each path's outcome, from worker processes; a case a worker died on is recorded as a crash
    and the rest go to a new worker."""
    results: dict[int, list] = {}
    pending = list(paths)
    env = {**os.environ, "MEDFLOW_MAX_MEMORY": WORKER_BUDGET, "PYTHONPATH": str(REPO)}
    while pending:
        text = "".join(f"{i}\t{p}\n" for i, p in pending)
        done = subprocess.run([sys.executable, "-c", "from tests.fuzzkit import worker; worker()"], input=text,
                              capture_output=True, text=True, cwd=REPO, env=env, preexec_fn=_limit,
                              timeout=CASE_SECONDS * (len(pending) + 2))
        for line in done.stdout.splitlines():
            if not line.startswith(_MARK):
                continue  # a library's own message (libjpeg prints to stdout)
            index, *outcome = json.loads(line[len(_MARK):])
            results[index] = outcome
        pending = [(i, p) for i, p in pending if i not in results]
        if pending and done.returncode != 0:
            crashed = pending.pop(0)[0]
            results[crashed] = ["crash", f"worker ended with {done.returncode}: {done.stderr[-300:]}"]
        elif pending:
            raise RuntimeError(f"the worker answered no case from {pending[0][1]} on: {done.stderr[-500:]}")
    return results


def judge(case: Case, outcome: list, original: list) -> str:
    """refused, same, other or broke (see the module docstring)."""
    status = outcome[0]
    if status in ("error", "crash"):
        return "broke"
    if status == "refused":
        return "refused"
    if outcome[1:] == original[1:]:
        return "same"
    if case.kind == "truncate" or (case.kind in ("data", "zero", "append") and case.seed.checksummed):
        return "broke"
    return "other"


@dataclass(frozen=True)
class Report:
    counts: Counter
    by_seed: dict[str, Counter]
    broken: list[str]

    def lines(self) -> list[str]:
        total = sum(self.counts.values())
        head = (f"fuzzed {total} mutated files of {len(self.by_seed)} formats: {self.counts['refused']} refused "
                f"cleanly, {self.counts['same']} read unchanged, {self.counts['other']} read as another valid image, "
                f"{self.counts['broke']} broke")
        rows = [f"  {name:<13} " + ", ".join(f"{k} {c[k]}" for k in ("refused", "same", "other", "broke"))
                for name, c in self.by_seed.items()]
        return [head, *rows, *(f"  broke: {b}" for b in self.broken)]


def fuzz(folder: Path, per_seed: int, seed: int = 0, progress: Callable[[str], None] | None = None) -> Report:
    """Make seeds and their mutations under `folder`, read them all, and count the outcomes."""
    seeds_dir, cases_dir = folder / "seeds", folder / "cases"
    seeds_dir.mkdir(parents=True)
    cases_dir.mkdir()
    seeds = make_seeds(seeds_dir)
    cases = make_cases(seeds, cases_dir, per_seed, seed)
    if progress:
        progress(f"{len(seeds)} seed files, {len(cases)} mutated cases")
    originals = read_all([(-1 - i, s.path) for i, s in enumerate(seeds)])
    for i, item in enumerate(seeds):
        if originals[-1 - i][0] != "read":
            raise RuntimeError(f"seed {item.name} ({item.path}) does not read: {originals[-1 - i]}")
    outcomes = read_all([(c.index, c.path) for c in cases])
    counts, by_seed, broken = Counter(), {s.name: Counter() for s in seeds}, []
    for case in cases:
        original = originals[-1 - seeds.index(case.seed)]
        verdict = judge(case, outcomes[case.index], original)
        counts[verdict] += 1
        by_seed[case.seed.name][verdict] += 1
        if verdict == "broke":
            broken.append(f"{case.path} ({case.seed.name}, {case.kind}): {outcomes[case.index]}")
    return Report(counts, by_seed, broken)
