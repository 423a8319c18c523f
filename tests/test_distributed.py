"""Training across processes (torchrun, gloo on the CPU): sharding, gradient averaging, rank 0 alone writing,
and resuming a two-process run in one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nscl.errors import NSCLError
from nscl.losses import Targets, qa_loss
from nscl.models.nscl import NSCL
from nscl.training.distributed import World, shard, world_from_env

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import MODEL  # noqa: E402

TESTS = Path(__file__).parent


def torchrun(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` with one torch thread per process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def test_shard_gives_every_rank_the_same_number_of_disjoint_batches():
    batches = list(range(7))
    parts = [shard(batches, World(r, 3)) for r in range(3)]
    assert parts == [[0, 3], [1, 4], [2, 5]]  # batch 6 dropped: every rank makes the same number of steps
    assert shard(batches, World()) == batches
    with pytest.raises(NSCLError, match="fewer than the 4 processes"):
        shard([0, 1, 2], World(0, 4))


def test_world_from_env(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert world_from_env() == World()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    w = world_from_env()
    assert (w.rank, w.size, w.main, w.active) == (1, 2, False, True)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(NSCLError, match="RANK 2 is not within WORLD_SIZE 2"):
        world_from_env()


def test_two_processes_average_gradients(gen_root, gen_dataset, domain, tmp_path):
    """After one DDP step both ranks hold identical weights, equal to one process's step on the average of
    the two shards' gradients, starting from rank 0's initial weights."""
    torchrun(str(TESTS / "ddp_worker.py"), str(gen_root / "train"), str(tmp_path), cwd=tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert not np.array_equal(r0["batch"], r1["batch"])  # each rank trained on its own images
    assert not set(gen_dataset.q_image[r0["batch"]]) & set(gen_dataset.q_image[r1["batch"]])
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), k
    # The same step in one process: rank 0's initial weights, gradient averaged over the two batches.
    torch.manual_seed(0)
    model = NSCL(domain, MODEL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    total = 0
    for qids in (r0["batch"], r1["batch"]):
        b = gen_dataset.make_batch(qids)
        out, _ = model(b.images, b.boxes, b.mask, b.programs)
        loss, _, _ = qa_loss(out, Targets(b.kind, b.value))
        total = total + loss.mean() / 2
    opt.zero_grad()
    total.backward()
    opt.step()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0["params"][k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_torchrun_train_writes_once_and_resumes_in_one_process(gen_root, tmp_path):
    run = tmp_path / "run"
    flags = ["--data-dir", str(gen_root / "train"), "--image-height", "48", "--curriculum", "off"]
    flags += ["--set", "model.perception.width=8", "--set", "model.perception.feature_dim=32"]
    flags += ["--set", "model.perception.pair_dim=16", "--set", "data_trim=200", "--no-progress"]
    flags += ["--set", "save_interval=1", "--set", "validation_interval=1"]
    res = torchrun("-m", "nscl", "train", *flags, "--epochs", "2", "--run-dir", str(run), cwd=tmp_path)
    assert res.stdout.count("validation/acc/qa = ") == 1, res.stdout  # one rank prints the table
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint_epoch_1.pth",
        "checkpoint_last.pth",
        "curves.png",
        "metrics.jsonl",
        "train.log",
    ]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    # Both ranks' questions are counted: 200 questions minus the dev part, batches dropped only at the end.
    assert 150 < records[0]["train/questions"] <= 200
    log = (run / "train.log").read_text()
    assert log.count("epoch 2 stage") == 1 and "distributed: 2 processes (gloo)" in log
    # The two-process checkpoint resumes in one process (a change of world size).
    one = [sys.executable, "-m", "nscl", "train", *flags, "--epochs", "2", "--run-dir", str(run)]
    one += ["--resume", str(run / "checkpoint_epoch_1.pth")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(one, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert "distributed" not in (run / "train.log").read_text().split("resumed from")[-1]
