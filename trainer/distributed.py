"""Device choice and, under torchrun, DistributedDataParallel: one fold on several GPUs (or, for
tests, several CPU processes with the gloo backend)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from runtime.errors import InputError

log = logging.getLogger(__name__)


def choose_device(setting: str, local_rank: int = 0) -> torch.device:
    """auto: the GPU when there is one, else the CPU (`cpu_note` says so, for the caller to say
    once nothing can refuse the run any more)."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise InputError("training.device is cuda but this machine has no usable CUDA GPU; set it to auto or cpu.")
    if setting in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def cpu_note(setting: str, device: torch.device) -> str | None:
    """The warning for a run that looked for a GPU and found none; None otherwise."""
    if setting != "auto" or device.type != "cpu":
        return None
    threads = torch.get_num_threads()
    return (f"no GPU found: training on the CPU with {threads} thread{'' if threads == 1 else 's'} (trainer fit "
            "--threads sets how many); this is fine for small models and tests, slow for real ones")


@dataclass
class Distributed:
    """This process's place in a torchrun job (a job of one when not under torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device_setting: str) -> "Distributed":
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        device = choose_device(device_setting, local_rank)
        if world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend=backend)
            log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
        return cls(rank=rank, world_size=world_size, device=device)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
