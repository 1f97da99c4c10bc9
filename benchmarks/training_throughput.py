"""Training throughput: patches per second with the full augmentation list and without, and the share
of each step spent waiting for data, with the patch queue's workers off and on.

    python benchmarks/training_throughput.py [--steps 30] [--workers 2] [--patch 64] [--quick]

The model is the trainer's 3D UNet (base 16 filters, depth 4); the data are synthetic subjects made in
memory (a textured head with a lesion on a zero background), preprocessed already, as the trainer holds
them. Each setting trains `--steps` optimisation steps after two warm-up steps.

    python benchmarks/training_throughput.py --gandlf benchmarks/out/gandlf-venv/bin/python [--epochs 3] [--size 64]

Side by side with GaNDLF instead (its venv made by benchmarks/gandlf_setup.sh): the same synthetic subjects,
written as NIfTI files and a CSV, trained with `trainer fit` and with `gandlf run --train` (same patch, batch,
UNet width, patches per subject, epochs, and subjects in each role), then `python -m export build --onnx` and
`runtime predict` against `gandlf run --infer` in turn, one new process per held-out subject. It prints seconds per
epoch (training and validation, as each tool times its epoch), seconds per subject, and ours / GaNDLF.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainer.augment import build_augmentation
from trainer.losses import build_loss
from trainer.models import ModelSpec, build_model
from trainer.sampling import Sample, patch_loader
from window_bench.host import print_machine

FULL_AUGMENTATION: dict[str, dict[str, Any]] = {
    "flip": {"probability": 0.5, "axes": [0, 1, 2]},
    "rotate90": {"probability": 0.3, "axes": [1, 2]},
    "affine": {"probability": 0.3, "scales": 0.1, "degrees": 10},
    "elastic": {"probability": 0.2, "control_points": 7, "max_displacement": 5.0},
    "anisotropy": {"probability": 0.2, "downsampling": [1.5, 4]},
    "blur": {"probability": 0.2, "std": [0, 1]},
    "noise": {"probability": 0.3, "std": 0.1},
    "gamma": {"probability": 0.3, "log_gamma": 0.3},
    "bias_field": {"probability": 0.2, "coefficients": 0.5},
    "motion": {"probability": 0.1, "degrees": 10, "translation": 10, "transforms": 2},
    "ghosting": {"probability": 0.1, "num_ghosts": [4, 10], "intensity": [0.5, 1]},
    "spike": {"probability": 0.1, "num_spikes": 1, "intensity": [1, 3]},
}


def synthetic_subjects(count: int, shape: tuple[int, int, int], seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    head = sum(g ** 2 for g in grids) < 0.8
    samples = []
    for i in range(count):
        centre = rng.uniform(-0.3, 0.3, 3)
        lesion = sum((g - c) ** 2 for g, c in zip(grids, centre)) < 0.04
        image = np.where(head, rng.normal(0, 1, shape), 0).astype(np.float32) + 2.5 * lesion
        samples.append(Sample(subject_id=f"s{i}", image=image[np.newaxis], label=lesion.astype(np.int64)))
    return samples


def measure(samples: list[Sample], augmentation: dict | None, workers: int, steps: int, patch: int,
            batch: int) -> dict[str, float]:
    torch.manual_seed(0)
    spec = ModelSpec(architecture="unet", dimensions=3, in_channels=1, out_channels=2, task="segmentation",
                     base_filters=16, depth=4, norm="instance")
    model = build_model(spec)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = build_loss("dice_ce", "segmentation")
    transform = build_augmentation(augmentation, 3) if augmentation else None
    loader = patch_loader(samples, patch_size=(patch,) * 3, sampler="label", label_probabilities=None,
                          per_volume=4, queue_length=16, workers=workers, batch_size=batch, augmentation=transform,
                          dimensions=3, seed=0, task="segmentation")
    waited = computed = 0.0
    done = 0
    while done < steps + 2:
        started = time.perf_counter()
        for batch_data in loader:
            ready = time.perf_counter()
            optimizer.zero_grad()
            loss = loss_fn(model(batch_data["image"]), batch_data["label"])
            loss.backward()
            optimizer.step()
            finished = time.perf_counter()
            if done >= 2:
                waited += ready - started
                computed += finished - ready
            done += 1
            started = time.perf_counter()
            if done >= steps + 2:
                break
    total = waited + computed
    return {"patches_per_s": steps * batch / total, "loading_share": waited / total, "step_s": total / steps}


# ----------------------------------------------------------------------------- side by side with GaNDLF

@dataclass(frozen=True)
class Case:
    """One comparison: the same subjects, patch, batch, network and epochs for both tools."""

    work: Path
    gandlf_python: Path
    subjects: int
    held_out: int
    size: int
    patch: int
    batch: int
    epochs: int
    per_volume: int
    overlap: float

    @property
    def overlap_voxels(self) -> int:
        return int(round(self.overlap * self.patch))


def say(line: str) -> None:
    print(line, flush=True)


def write_subjects(case: Case) -> list[dict[str, str]]:
    """The synthetic subjects as NIfTI files (1 mm, float32 image, uint8 label map); one row per subject, the
    training subjects first, then the held-out ones."""
    import SimpleITK as sitk

    folder = case.work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for sample in synthetic_subjects(case.subjects + case.held_out, (case.size,) * 3):
        image, label = folder / f"{sample.subject_id}_image.nii.gz", folder / f"{sample.subject_id}_label.nii.gz"
        sitk.WriteImage(sitk.GetImageFromArray(sample.image[0]), str(image))
        sitk.WriteImage(sitk.GetImageFromArray(sample.label.astype(np.uint8)), str(label))
        rows.append({"subject_id": sample.subject_id, "image": str(image), "label": str(label)})
    return rows


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def our_config(case: Case, subjects_csv: Path) -> dict[str, Any]:
    return {
        "name": "throughput_unet", "task": "segmentation", "modality": "radiology", "dimensions": 3,
        "output_dir": str(case.work / "ours" / "run"), "seed": 0,
        "data": {"csv": str(subjects_csv), "channels": ["image"], "label": "label",
                 "classes": {0: "background", 1: "lesion"}},
        "preprocessing": [{"zscore": {"region": "nonzero"}}],
        "patch": {"size": [case.patch] * 3, "sampler": "label", "per_volume": case.per_volume,
                  "queue_length": 8 * case.per_volume, "workers": 0},
        "model": {"architecture": "unet", "base_filters": 16, "depth": 4, "norm": "instance"},
        "training": {"epochs": case.epochs, "batch_size": case.batch, "loss": "dice_ce",
                     "optimizer": {"name": "adam", "lr": 0.001}, "early_stopping": {"patience": None},
                     "mixed_precision": False, "device": "cpu"},
        "cross_validation": {"testing_folds": 0, "validation_fraction": 0.34},
        "inference": {"overlap": case.overlap, "batch_size": 1, "skip_background": False},
    }


def gandlf_config(case: Case) -> dict[str, Any]:
    return {
        "version": {"minimum": "0.1.5", "maximum": "0.1.5"}, "modality": "rad",
        "patch_size": [case.patch] * 3,
        "model": {"dimension": 3, "architecture": "unet", "base_filters": 16, "norm_type": "instance",
                  "final_layer": "softmax", "class_list": [0, 1], "num_channels": 1, "amp": False,
                  "print_summary": False},
        "loss_function": "dcce", "metrics": ["dice"], "optimizer": {"type": "adam"}, "learning_rate": 0.001,
        "scheduler": {"type": "cosineannealing"}, "num_epochs": case.epochs, "patience": case.epochs,
        "batch_size": case.batch, "q_samples_per_volume": case.per_volume, "q_max_length": 8 * case.per_volume,
        "q_num_workers": 0, "patch_sampler": {"type": "label"},
        "data_preprocessing": {"normalize_nonZero": None},
        "inference_mechanism": {"grid_aggregator_overlap": "average", "patch_overlap": case.overlap_voxels},
        "nested_training": {"testing": 1, "validation": -5},
        "parallel_compute_command": "", "in_memory": False, "save_output": False,
        "verbose": True,  # GaNDLF prints "Time taken for epoch" only when verbose
    }


def run_logged(command: list[str], log: Path, watch: Callable[[str], None] = lambda line: None,
               env: dict[str, str] | None = None) -> float:
    """Run a command, its output into `log` and line by line to `watch`; its wall-clock seconds."""
    started = time.perf_counter()
    with log.open("a") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=env, errors="replace")
        for line in process.stdout:
            sink.write(line)
            watch(line.rstrip("\n"))
        code = process.wait()
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"{command[0]} exited with {code} after {seconds:.1f} s; see {log}")
    return seconds


def tool(python: Path, name: str) -> str:
    """A console script of the environment `python` belongs to."""
    return str(python.parent / name)


def gandlf_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


# --- ours: trainer fit, export build, runtime predict

OUR_EPOCH = re.compile(r"epoch (\d+)/\d+: .*, ([0-9.]+) s, ETA")


def our_training(case: Case, rows: list[dict[str, str]]) -> tuple[list[float], float]:
    """The epoch times `trainer fit` prints, and the wall clock of the whole command."""
    folder = case.work / "ours"
    folder.mkdir(parents=True, exist_ok=True)
    config = write_yaml(folder / "config.yaml", our_config(case, write_csv(folder / "subjects.csv", rows)))
    seconds: list[float] = []

    def watch(line: str) -> None:
        match = OUR_EPOCH.search(line)
        if match:
            seconds.append(float(match.group(2)))
            say(f"  ours:   {line.strip()}")

    wall = run_logged([tool(Path(sys.executable), "trainer"), "fit", str(config)], folder / "log.txt", watch)
    return seconds, wall


def our_splits(case: Case) -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {"train": [], "validation": []}
    with (case.work / "ours" / "run" / "splits.csv").open() as handle:
        for row in csv.DictReader(handle):
            roles.setdefault(row["role"], []).append(row["subject_id"])
    return roles


def our_export(case: Case) -> Path:
    folder = case.work / "ours"
    repository = folder / "model_repository"
    run_logged([sys.executable, "-m", "export", "build", str(folder / "run"), "--onnx", "--repository",
                str(repository)], folder / "log.txt")
    return repository / "throughput_unet"


OUR_BACKEND = re.compile(r" on (\S+), ready in ")


def our_inference(case: Case, model: Path, row: dict[str, str]) -> float:
    output = case.work / "ours" / "predictions" / f"{row['subject_id']}.nii.gz"
    output.parent.mkdir(parents=True, exist_ok=True)
    backends: list[str] = []

    def watch(line: str) -> None:
        match = OUR_BACKEND.search(line)
        if match:
            backends.append(match.group(1))

    seconds = run_logged([tool(Path(sys.executable), "runtime"), "-v", "predict", row["image"], "--model",
                          str(model), "--output", str(output), "--quiet"], case.work / "ours" / "log.txt", watch)
    return timed_subject(f"ours ({', '.join(backends) or 'backend not logged'})", seconds, row, output)


# --- GaNDLF: gandlf run --train, gandlf run --infer

GANDLF_EPOCH = re.compile(r"Time taken for epoch :\s+([0-9.eE+-]+)\s+mins")


def gandlf_rows(rows: list[dict[str, str]], subjects: list[str], label: bool = True) -> list[dict[str, str]]:
    chosen = [r for r in rows if r["subject_id"] in subjects]
    return [{"SubjectID": r["subject_id"], "Channel_0": r["image"], **({"Label": r["label"]} if label else {})}
            for r in chosen]


def gandlf_training(case: Case, rows: list[dict[str, str]],
                    roles: dict[str, list[str]]) -> tuple[list[float], float]:
    """GaNDLF's own epoch times, and the wall clock of the whole `gandlf run --train`."""
    folder = case.work / "gandlf"
    folder.mkdir(parents=True, exist_ok=True)
    config = write_yaml(folder / "config.yaml", gandlf_config(case))
    train = write_csv(folder / "train.csv", gandlf_rows(rows, roles["train"]))
    validation = write_csv(folder / "validation.csv", gandlf_rows(rows, roles["validation"]))
    seconds: list[float] = []

    def watch(line: str) -> None:
        match = GANDLF_EPOCH.search(line)
        if match:
            seconds.append(60 * float(match.group(1)))
            say(f"  GaNDLF: epoch {len(seconds)}/{case.epochs}: {match.group(0)} = {seconds[-1]:.1f} s")

    wall = run_logged([tool(case.gandlf_python, "gandlf"), "run", "--config", str(config), "--input-data",
                       f"{train},{validation}", "--train", "--model-dir", str(folder / "model")],
                      folder / "log.txt", watch, env=gandlf_env())
    return seconds, wall


def gandlf_inference(case: Case, row: dict[str, str]) -> float:
    folder = case.work / "gandlf"
    subject = write_csv(folder / f"infer_{row['subject_id']}.csv", gandlf_rows([row], [row["subject_id"]], False))
    seconds = run_logged([tool(case.gandlf_python, "gandlf"), "run", "--config", str(folder / "config.yaml"),
                          "--input-data", str(subject), "--infer", "--model-dir", str(folder / "model"),
                          "--output-path", str(folder / "predictions" / row["subject_id"])],
                         folder / "log.txt", env=gandlf_env())
    written = sorted((folder / "model" / "output_inference" / row["subject_id"]).glob("*_seg*.nii.gz"))
    return timed_subject("GaNDLF (torch)", seconds, row, written[-1] if written else None)


# --- the run and its table

GANDLF_PARAMETERS = ("import sys, torch; state = torch.load(sys.argv[1], map_location='cpu', weights_only=False)"
                     "['model_state_dict']; print(sum(v.numel() for k, v in state.items() if v.is_floating_point() "
                     "and 'running_' not in k))")


def parameter_counts(case: Case) -> tuple[int, int]:
    """Weights of the two trained networks (no running statistics), from their checkpoints; GaNDLF's is read
    in its own venv."""
    ours = torch.load(case.work / "ours" / "run" / "folds" / "0.1" / "best.pt", map_location="cpu",
                      weights_only=True)["model"]
    theirs = subprocess.run([str(case.gandlf_python), "-c", GANDLF_PARAMETERS,
                             str(case.work / "gandlf" / "model" / "unet_best.pth.tar")], capture_output=True,
                            text=True, env=gandlf_env(), check=True)
    mine = sum(v.numel() for k, v in ours.items() if v.is_floating_point() and "running_" not in k)
    return mine, int(theirs.stdout.split()[-1])


@dataclass
class Side:
    """One tool's figures: its epoch times (and where they come from), its whole training command, and
    the seconds of each subject's inference."""

    epochs: list[float]
    training_wall: float
    epoch_source: str
    inference: list[float]


def compare(case: Case) -> None:
    say(f"3D UNet (16 filters, depth 4), patch {case.patch}³, batch {case.batch}, {case.per_volume} patches per "
        f"subject and epoch, {case.epochs} epochs, {case.subjects} subjects of {case.size}³ (+ {case.held_out} "
        f"held out for inference), overlap {case.overlap} ({case.overlap_voxels} voxels), work folder {case.work}")
    say(f"load average (1, 5, 15 min) at the start: {_load()}")
    rows = write_subjects(case)
    training, held_out = rows[:case.subjects], rows[case.subjects:]
    say(f"[1/4] ours: trainer fit ({len(rows)} subjects written as NIfTI) ...")
    ours = Side(*our_training(case, training), "`trainer fit`'s epoch line", [])
    roles = our_splits(case)
    say(f"      splits: train {', '.join(roles['train'])}; validation {', '.join(roles['validation'])}")
    say("[2/4] ours: python -m export build --onnx ...")
    model = our_export(case)
    say("[3/4] GaNDLF: gandlf run --train on the same train / validation subjects ...")
    gandlf = Side(*gandlf_training(case, training, roles), "GaNDLF's \"Time taken for epoch\"", [])
    if not gandlf.epochs:
        gandlf.epochs = [gandlf.training_wall / case.epochs] * case.epochs
        gandlf.epoch_source = f"GaNDLF's whole `gandlf run --train` / {case.epochs} (it printed no epoch time)"
    say(f"[4/4] runtime predict and gandlf run --infer in turn, one new process per held-out subject "
        f"({', '.join(r['subject_id'] for r in held_out)}) ...")
    for row in held_out:
        ours.inference.append(our_inference(case, model, row))
        gandlf.inference.append(gandlf_inference(case, row))
    mine, theirs = parameter_counts(case)
    say(f"networks: ours {mine:,} parameters, GaNDLF's unet {theirs:,} (both 16 base filters, 4 down-samplings)")
    report(ours, gandlf)


def timed_subject(who: str, seconds: float, row: dict[str, str], output: Path | None) -> float:
    """One subject's line; the label map the tool wrote must be there, on the subject's grid."""
    import SimpleITK as sitk

    if output is None or not output.is_file():
        raise SystemExit(f"{who} wrote no label map for {row['subject_id']} (expected at {output})")
    size = sitk.ReadImage(str(output)).GetSize()
    say(f"  {who}: {row['subject_id']} {seconds:.2f} s, label map {'x'.join(map(str, size))} at {output}")
    return seconds


def report(ours: Side, gandlf: Side) -> None:
    if not ours.epochs:
        raise SystemExit("`trainer fit` printed no epoch line; see the log in the work folder")
    say(f"load average (1, 5, 15 min) at the end: {_load()}")
    say(f"{'':<36}{'ours':>9}{'GaNDLF':>9}{'ours/GaNDLF':>13}")
    for name, mine, theirs in (
            ("training s/epoch, mean", statistics.mean(ours.epochs), statistics.mean(gandlf.epochs)),
            ("training s/epoch, fastest", min(ours.epochs), min(gandlf.epochs)),
            ("whole training command s", ours.training_wall, gandlf.training_wall),
            ("inference s/subject, mean", statistics.mean(ours.inference), statistics.mean(gandlf.inference)),
            ("inference s/subject, fastest", min(ours.inference), min(gandlf.inference))):
        say(f"{name:<36}{mine:>9.2f}{theirs:>9.2f}{mine / theirs:>13.2f}")
    say(f"epochs, s: ours {_listed(ours.epochs)}; GaNDLF {_listed(gandlf.epochs)}")
    say(f"subjects, s: ours {_listed(ours.inference, 2)}; GaNDLF {_listed(gandlf.inference, 2)}")
    say(f"s/epoch: the training pass and the validation of the validation subjects, from {ours.epoch_source} "
        f"and {gandlf.epoch_source}")
    say("s/subject: wall clock of one new process per subject (start, model load, read, sliding window, write), "
        f"`runtime predict` against `gandlf run --infer`, over {len(ours.inference)} held-out subject(s)")


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _listed(values: list[float], digits: int = 1) -> str:
    return " ".join(f"{v:.{digits}f}" for v in values)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=None, help="patch side (default 64; 32 with --gandlf)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="patch 32, 6 steps: a smoke run")
    side = parser.add_argument_group("side by side with GaNDLF")
    side.add_argument("--gandlf", type=Path, metavar="PYTHON",
                      help="the python of a GaNDLF venv (benchmarks/gandlf_setup.sh): run the comparison instead")
    side.add_argument("--epochs", type=int, default=3)
    side.add_argument("--subjects", type=int, default=6, help="training subjects; a third of them validate")
    side.add_argument("--held-out", type=int, default=3, help="more subjects, for the inference timings")
    side.add_argument("--size", type=int, default=64, help="side of the cubic subjects, voxels")
    side.add_argument("--per-volume", type=int, default=4, help="patches drawn per subject and epoch")
    side.add_argument("--overlap", type=float, default=0.5, help="window overlap at inference, both tools")
    side.add_argument("--work-dir", type=Path, default=Path("benchmarks/out/training_vs_gandlf"),
                      help="where the subjects, configs, runs, models and logs go (a new folder)")
    return parser.parse_args()


def comparison_case(args: argparse.Namespace) -> Case:
    work = args.work_dir.resolve()
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: give another --work-dir or remove it")
    if not args.gandlf.is_file():
        raise SystemExit(f"--gandlf {args.gandlf}: no such python; make the venv with benchmarks/gandlf_setup.sh")
    return Case(work=work, gandlf_python=args.gandlf.absolute(), subjects=args.subjects, held_out=args.held_out,
                size=args.size, patch=args.patch or 32, batch=args.batch_size, epochs=args.epochs,
                per_volume=args.per_volume, overlap=args.overlap)


def main() -> None:
    args = parse_args()
    print_machine()
    if args.gandlf is not None:
        compare(comparison_case(args))
        return
    args.patch = args.patch or 64
    if args.quick:
        args.patch, args.steps = 32, 6
    torch.set_num_threads(args.threads)
    shape = (args.patch * 2, args.patch * 2, args.patch * 2)
    samples = synthetic_subjects(6, shape)
    print(f"3D UNet (16 filters, depth 4), patch {args.patch}³, batch {args.batch_size}, {args.steps} steps, "
          f"{args.threads} torch threads, subjects {shape}", flush=True)
    print(f"{'augmentation':<14}{'workers':>8}{'patches/s':>11}{'s/step':>8}{'waiting for data':>18}", flush=True)
    rows = {}
    for name, augmentation in (("none", None), ("all 12", FULL_AUGMENTATION)):
        for workers in (0, args.workers):
            result = measure(samples, augmentation, workers, args.steps, args.patch, args.batch_size)
            rows[(name, workers)] = result
            print(f"{name:<14}{workers:>8}{result['patches_per_s']:>11.2f}{result['step_s']:>8.2f}"
                  f"{100 * result['loading_share']:>17.1f}%", flush=True)
    kept = rows[("all 12", args.workers)]["patches_per_s"] / rows[("none", args.workers)]["patches_per_s"]
    print(f"with full augmentation: {kept:.2f}x the throughput without, with {args.workers} workers "
          "(1.0 = no cost; above 1 within noise)", flush=True)


if __name__ == "__main__":
    main()
