"""Run by tests/test_distributed.py under torchrun (two CPU processes): one DistributedDataParallel step of a tiny
NS-CL on this rank's shard of the batches, then this rank's parameters and batch saved to OUT/rank{R}.pt."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from nscl.data import SplitPaths, load_split
from nscl.domain import builtin_domain
from nscl.inference.dataset import QADataset
from nscl.models.concepts import ConceptConfig
from nscl.models.nscl import NSCL, ModelConfig
from nscl.models.perception import PerceptionConfig
from nscl.training.distributed import init_world, shard, shutdown, training_step_module

MODEL = ModelConfig(PerceptionConfig(width=8, feature_dim=32, pair_dim=16), ConceptConfig())


def main(data_dir: str, out: str) -> None:
    world, device = init_world(torch.device("cpu"))
    domain = builtin_domain()
    ds = QADataset(load_split(SplitPaths.resolve(data_dir), domain), domain, 48)
    torch.manual_seed(world.rank)  # different initial weights: DDP must broadcast rank 0's
    model = NSCL(domain, MODEL)
    step = training_step_module(model, world, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batches = list(ds.batches(np.nonzero(ds.q_image < 8)[0], 24, np.random.default_rng(0)))
    mine = shard(batches, world)[0]
    loss, _ = step(ds.make_batch(mine))
    opt.zero_grad()
    loss.mean().backward()
    opt.step()
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"params": params, "batch": mine, "world": world.size}, Path(out) / f"rank{world.rank}.pt")
    shutdown(world)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
