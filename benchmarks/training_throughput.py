"""Training throughput: patches per second with the full augmentation list and without, and the share
of each step spent waiting for data, with the patch queue's workers off and on.

    python benchmarks/training_throughput.py [--steps 30] [--workers 2] [--patch 64] [--quick]

The model is the trainer's 3D UNet (base 16 filters, depth 4); the data are synthetic subjects made in
memory (a textured head with a lesion on a zero background), preprocessed already, as the trainer holds
them. Each setting trains `--steps` optimisation steps after two warm-up steps.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from trainer.augment import build_augmentation
from trainer.losses import build_loss
from trainer.models import ModelSpec, build_model
from trainer.sampling import Sample, patch_loader

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="patch 32, 6 steps: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.patch, args.steps = 32, 6
    torch.set_num_threads(args.threads)
    shape = (args.patch * 2, args.patch * 2, args.patch * 2)
    samples = synthetic_subjects(6, shape)
    print(f"3D UNet (16 filters, depth 4), patch {args.patch}³, batch {args.batch_size}, {args.steps} steps, "
          f"{args.threads} torch threads, subjects {shape}")
    print(f"{'augmentation':<14}{'workers':>8}{'patches/s':>11}{'s/step':>8}{'waiting for data':>18}")
    rows = {}
    for name, augmentation in (("none", None), ("all 12", FULL_AUGMENTATION)):
        for workers in (0, args.workers):
            result = measure(samples, augmentation, workers, args.steps, args.patch, args.batch_size)
            rows[(name, workers)] = result
            print(f"{name:<14}{workers:>8}{result['patches_per_s']:>11.2f}{result['step_s']:>8.2f}"
                  f"{100 * result['loading_share']:>17.1f}%")
    slowdown = rows[("none", args.workers)]["patches_per_s"] / rows[("all 12", args.workers)]["patches_per_s"]
    print(f"full augmentation costs {slowdown:.2f}x the throughput without, with {args.workers} workers")


if __name__ == "__main__":
    main()
