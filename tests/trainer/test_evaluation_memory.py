"""Evaluation during training: a GPU out of memory on a whole subject hands the work to the CPU."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import trainer.evaluate as evaluate_module
from runtime.manifest import ClassSpec
from trainer.losses import build_loss
from trainer.sampling import Sample

CLASSES = [ClassSpec(0, "low"), ClassSpec(1, "mid"), ClassSpec(2, "high")]


def test_a_gpu_out_of_memory_during_validation_falls_back_to_the_cpu_with_a_warning(monkeypatch, caplog):
    """The GPU's failure is staged (this machine has none); the CPU's evaluation that follows is real
    and gives what an evaluation on the CPU gives."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    rng = np.random.default_rng(0)
    samples = [Sample(f"s{i}", rng.normal(size=(2, 4, 4)).astype(np.float32), target=i % 3) for i in range(6)]
    loss = build_loss("ce", "classification")
    expected = evaluate_module.evaluate(model, torch.device("cpu"), samples, "classification", None, CLASSES, loss)
    original = evaluate_module.score_metrics
    devices: list[str] = []

    def out_of_memory_on_the_gpu(net, device, *args):
        devices.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return original(net, device, *args)

    monkeypatch.setattr(evaluate_module, "score_metrics", out_of_memory_on_the_gpu)
    with caplog.at_level(logging.WARNING):
        result = evaluate_module.evaluate(model, torch.device("cuda"), samples, "classification", None, CLASSES, loss)
    assert devices == ["cuda", "cpu"]
    assert result.scores == pytest.approx(expected.scores) and result.cases == expected.cases
    assert "ran out of GPU memory" in caplog.text and "on the CPU" in caplog.text
    assert model.training                                       # the model is left as it was given


def test_an_out_of_memory_error_on_the_cpu_is_not_hidden(monkeypatch):
    def failing(*args):
        raise torch.cuda.OutOfMemoryError("out of memory")

    monkeypatch.setattr(evaluate_module, "score_metrics", failing)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        evaluate_module.evaluate(model, torch.device("cpu"), [], "classification", None, [], build_loss("ce", "classification"))


def test_validation_labels_on_the_grid_as_read_are_made_a_slab_at_a_time_as_a_whole_inversion_gives(monkeypatch):
    """Brought back through a resampling and a padding to the patch: slabs of a few rows give the
    labels the whole map's inversion gives, while no class map of the grid as read is whole."""
    from runtime.preprocess import Step, Volume, invert, run_steps
    from trainer import evaluate as evaluate_module

    rng = np.random.default_rng(0)
    volume = Volume.from_array(rng.normal(size=(1, 23, 17, 9)).astype(np.float32) + 5, (2.0, 1.0, 0.7))
    steps = [Step("resample", {"spacing": [1.3, 1.1, 1.0]})]
    preprocessed, record = run_steps(volume, steps, min_shape=(32, 16, 16))
    assert record.transforms and preprocessed.spatial_shape[0] == 35
    logits = rng.normal(size=(3, *preprocessed.spatial_shape)).astype(np.float32)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    background = np.array([1.0, 0.0, 0.0], np.float32)
    whole = np.argmax(invert(record, probabilities, background, "linear"), axis=0)
    import runtime.slab_labels as slab_labels

    monkeypatch.setattr(slab_labels, "SLAB_BYTES", 3 * 4 * 17 * 9 * 4)        # four rows at a time
    slabs = evaluate_module.labels_as_read(record, probabilities, background)
    assert slabs.shape == (23, 17, 9) and np.mean(slabs == whole) > 0.999


def test_each_sample_is_read_once_so_a_progress_bar_counts_it_once():
    """Validation samples come through a progress bar that ticks as each is read."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    rng = np.random.default_rng(0)
    reads: list[str] = []

    class Ticking(list):
        def __iter__(self):
            for sample in super().__iter__():
                reads.append(sample.subject_id)
                yield sample

    samples = Ticking(Sample(f"s{i}", rng.normal(size=(2, 4, 4)).astype(np.float32), target=i % 3) for i in range(5))
    evaluation = evaluate_module.evaluate(model, torch.device("cpu"), samples, "classification", None, CLASSES,
                                          build_loss("ce", "classification"))
    assert reads == [f"s{i}" for i in range(5)]
    assert [case["subject_id"] for case in evaluation.cases] == reads and evaluation.cases[4]["label"] == 1
