"""Evaluation during training: a GPU out of memory on a whole subject hands the work to the CPU."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import trainer.evaluate as evaluate_module
from trainer.losses import build_loss
from trainer.sampling import Sample


def test_a_gpu_out_of_memory_during_validation_falls_back_to_the_cpu_with_a_warning(monkeypatch, caplog):
    """The GPU's failure is staged (this machine has none); the CPU's evaluation that follows is real
    and gives what an evaluation on the CPU gives."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3))
    rng = np.random.default_rng(0)
    samples = [Sample(f"s{i}", rng.normal(size=(2, 4, 4)).astype(np.float32), target=i % 3) for i in range(6)]
    loss = build_loss("ce", "classification")
    expected = evaluate_module.evaluate(model, torch.device("cpu"), samples, "classification", None, [], loss)
    original = evaluate_module.score_metrics
    devices: list[str] = []

    def out_of_memory_on_the_gpu(net, device, *args):
        devices.append(device.type)
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
        return original(net, device, *args)

    monkeypatch.setattr(evaluate_module, "score_metrics", out_of_memory_on_the_gpu)
    with caplog.at_level(logging.WARNING):
        result = evaluate_module.evaluate(model, torch.device("cuda"), samples, "classification", None, [], loss)
    assert devices == ["cuda", "cpu"]
    assert result == pytest.approx(expected)
    assert "ran out of GPU memory" in caplog.text and "on the CPU" in caplog.text
    assert model.training                                       # the model is left as it was given


def test_an_out_of_memory_error_on_the_cpu_is_not_hidden(monkeypatch):
    def failing(*args):
        raise torch.cuda.OutOfMemoryError("out of memory")

    monkeypatch.setattr(evaluate_module, "score_metrics", failing)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(torch.cuda.OutOfMemoryError):
        evaluate_module.evaluate(model, torch.device("cpu"), [], "classification", None, [], build_loss("ce", "classification"))
