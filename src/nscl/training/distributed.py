"""Training across processes with torch.distributed: ``torchrun --nproc-per-node N -m nscl train ...``.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`init_world` joins the process group (gloo on the
CPU, NCCL on CUDA, each rank on GPU ``LOCAL_RANK``). Every rank draws the same batches of an epoch (same seed) and
trains on every ``WORLD_SIZE``-th one (:func:`shard`), so the data is sharded by image; DistributedDataParallel
averages the gradients, so a step sees ``WORLD_SIZE`` batches (the effective batch grows with the world; the
learning rate is the config's). Rank 0 alone evaluates, logs and writes checkpoints; the checkpoint holds the plain
model, so a run resumes on any number of processes. Without torchrun the world is one process and nothing here
does anything.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import NSCLError
from ..inference.dataset import Batch
from ..losses import Targets, qa_loss
from ..models.nscl import NSCL

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates, logs and writes."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world torchrun describes in the environment; one process when it is absent."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    except ValueError:
        raise NSCLError("RANK, WORLD_SIZE, LOCAL_RANK must be integers (as torchrun sets them)") from None
    if size < 1 or not 0 <= rank < size:
        raise NSCLError(f"RANK {rank} is not within WORLD_SIZE {size}")
    return World(rank, size, local_rank, local_size)


def init_world(device: torch.device, threads: int = 0) -> tuple[World, torch.device]:
    """Join torchrun's process group (when there is one) and pick this rank's device: ``cuda:LOCAL_RANK`` for a
    CUDA device, else ``device``. On the CPU each process gets an equal share of the cores (or of ``threads``)."""
    world = world_from_env()
    if not world.active:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, (threads or cores) // world.local_size))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not world.main:  # the other ranks speak only when something is wrong
        logging.getLogger("nscl").setLevel(logging.WARNING)
    log.info("distributed: %d processes (%s), this is rank %d", world.size, dist.get_backend(), world.rank)
    return world, device


def shard(batches: Sequence[T], world: World) -> list[T]:
    """This rank's share of an epoch's batches: every ``world.size``-th one from ``world.rank``, the same number
    on every rank (the last ``len % size`` batches are dropped so that no rank waits for a missing step)."""
    if not world.active:
        return list(batches)
    n = len(batches) // world.size * world.size
    if n == 0:
        raise NSCLError(
            f"an epoch has {len(batches)} batches, fewer than the {world.size} processes; "
            "use fewer processes or a smaller batch_size"
        )
    return list(batches[world.rank : n : world.size])


def all_sum(values: Sequence[float], world: World) -> list[float]:
    """Element-wise sum of ``values`` over the ranks (every rank gets the sums)."""
    if not world.active:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def barrier(world: World) -> None:
    if world.active:
        dist.barrier()


class QAStep(nn.Module):
    """The model and the QA loss as one module, so that DistributedDataParallel sees exactly the tensors the loss
    depends on: batch -> (per-question loss Tensor[Q], correct Tensor[Q] bool)."""

    def __init__(self, model: NSCL) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor]:
        out, _ = self.model(batch.images, batch.boxes, batch.mask, batch.programs)
        loss, correct, _ = qa_loss(out, Targets(batch.kind, batch.value))
        return loss, correct


def training_step_module(model: NSCL, world: World, device: torch.device) -> nn.Module:
    """:class:`QAStep` of ``model``, wrapped in DistributedDataParallel when the world has several processes
    (unused parameters allowed: a batch without relational questions leaves the relation head out)."""
    step = QAStep(model)
    if not world.active:
        return step
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)


def shutdown(world: World) -> None:
    if world.active and dist.is_initialized():
        dist.destroy_process_group()
