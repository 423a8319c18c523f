"""``nscl train --training-target derender``: perception and concepts learned from questions, answers and the
given programs, with the release's curriculum, flags and metric names (NSCL-REFERENCE section 7)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..data import SplitPaths, load_split
from ..domain import Domain
from ..inference.dataset import Batch, QADataset, split_train_dev
from ..inference.evaluate import evaluate
from ..models.nscl import NSCL
from ..progress import progress_bar
from ..question_table import load_split_compact
from ..run_config import TrainConfig
from ..vocab import Vocab
from .curriculum import RELEASE_TABLE, stage_at
from .curves import plot_curves
from .distributed import (
    World,
    all_sum,
    barrier,
    init_world,
    shard,
    shutdown,
    training_step_module,
    world_from_env,
)
from .harness import FitResult, Run

log = logging.getLogger(__name__)


def trim(ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``--data-trim``: a seeded subset of question ids, this fraction (< 1) or this many (>= 1); 0 keeps all."""
    if fraction <= 0:
        return ids
    n = int(fraction) if fraction >= 1 else max(1, int(len(ids) * fraction))
    return np.sort(np.random.default_rng([seed, 11]).permutation(ids)[:n])


def build_optimizer(
    model: NSCL, cfg: TrainConfig
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay
    )
    if cfg.lr_schedule == "cosine":
        sched: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            opt, T_max=max(1, cfg.epochs - 1), eta_min=cfg.lr / 100
        )
    else:
        milestone = max(1, math.ceil(cfg.epochs * cfg.lr_decay_at))
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[milestone], gamma=0.1)
    return opt, sched


def batch_loader(
    ds: QADataset, batches: list[np.ndarray], workers: int, device: torch.device
) -> Iterable[Batch]:
    """The epoch's batches assembled in order: here, or in ``workers`` DataLoader processes (pinned memory when
    training on CUDA)."""
    if workers <= 0:
        return (ds.make_batch(q) for q in batches)
    return torch.utils.data.DataLoader(
        batches,  # type: ignore[arg-type]
        batch_size=None,
        collate_fn=ds.make_batch,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def train_one_epoch(
    model: NSCL,
    ds: QADataset,
    ids: np.ndarray,
    opt: torch.optim.Optimizer,
    device: torch.device,
    cfg: TrainConfig,
    epoch: int,
    progress: bool = True,
    step: torch.nn.Module | None = None,
    world: World | None = None,
) -> dict[str, float]:
    """One pass over the question ids ``ids`` (repeated up to ``cfg.min_questions_per_epoch``), batched by
    image; returns ``train/loss``, ``train/acc/qa`` and ``train/questions`` (summed over the world's ranks).
    ``step``: ``training_step_module(model, ...)`` (made here when None); each rank trains on its
    :func:`shard` of the batches."""
    model.train()
    world = world or World()
    step = step if step is not None else training_step_module(model, world, device)
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = list(ds.batches(ids, cfg.batch_size, rng))
    # Short curriculum lessons: repeat reshuffled passes until min_questions_per_epoch questions.
    n = len(ids)
    while 0 < n < cfg.min_questions_per_epoch:
        batches += list(ds.batches(ids, cfg.batch_size, rng))
        n += len(ids)
    batches = shard(batches, world)
    tot_loss, tot_ok, tot_n = 0.0, 0, 0
    loader = batch_loader(ds, batches, cfg.loader_workers, device)
    bar = progress_bar(
        loader, progress and world.main, total=len(batches), desc=f"epoch {epoch}", unit="batch", leave=False
    )
    for batch in bar:
        qids = batch.question_ids
        batch = batch.to(device)
        loss, correct = step(batch)
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        tot_loss += float(loss.detach().sum())
        tot_ok += int(correct.sum())
        tot_n += len(qids)
        bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}", acc=f"{tot_ok / tot_n:.3f}")
    tot_loss, tot_ok, tot_n = all_sum([tot_loss, tot_ok, tot_n], world)
    return {
        "train/loss": tot_loss / max(tot_n, 1),
        "train/acc/qa": tot_ok / max(tot_n, 1),
        "train/questions": tot_n,
    }


def checkpoint_state(
    model: NSCL,
    cfg: TrainConfig,
    domain: Domain,
    opt: torch.optim.Optimizer | None,
    sched: torch.optim.lr_scheduler.LRScheduler | None,
    epoch: int,
    metrics: dict,
    vocab: list[str] | None,
) -> dict[str, Any]:
    return {
        "config": asdict(cfg),
        "domain": domain.to_dict(),
        "vocab": vocab,
        "model": model.state_dict(),
        "optimizer": opt.state_dict() if opt is not None else None,
        "scheduler": sched.state_dict() if sched is not None else None,
        "epoch": epoch,
        "torch_rng": torch.get_rng_state(),
        "metrics": metrics,
    }


def fit_nscl(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    run_dir: str | Path,
    device: torch.device,
    extra_paths: SplitPaths | None = None,
    resume: str | None = None,
    progress: bool = True,
    use_tb: bool = False,
) -> FitResult:
    """Train on ``paths`` (minus the dev part), validate on dev and on the extra split, save checkpoints;
    ``resume`` continues a run exactly (weights, optimiser, schedule, RNG, curriculum stage). Under torchrun the
    processes share the work (``training/distributed.py``) and rank 0 alone evaluates and writes."""
    world = world_from_env()
    with Run(run_dir, cfg, plot_curves, write=world.main) as run:
        world, device = init_world(device, cfg.threads)
        try:
            return _fit(cfg, domain, paths, run, device, world, extra_paths, resume, progress, use_tb)
        finally:
            shutdown(world)


def _fit(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    run: Run,
    device: torch.device,
    world: World,
    extra_paths: SplitPaths | None,
    resume: str | None,
    progress: bool,
    use_tb: bool,
) -> FitResult:
    read = load_split_compact if cfg.lazy_programs else load_split
    train_split = read(paths, domain)
    train_split.check_images()
    ds = QADataset(train_split, domain, cfg.image_height, progress, cfg.lazy_images)
    train_ids, dev_ids = split_train_dev(ds, cfg.data_split, cfg.seed)
    train_ids = trim(train_ids, cfg.data_trim, cfg.seed)
    extra = None
    if extra_paths is not None:
        extra_split = read(extra_paths, domain)
        extra_split.check_images()
        extra = QADataset(extra_split, domain, cfg.image_height, progress, cfg.lazy_images)
    log.info(
        "train: %d questions on %d images; dev: %d questions; extra: %s",
        len(train_ids),
        len(np.unique(ds.q_image[train_ids])),
        len(dev_ids),
        len(extra) if extra else "none",
    )
    model = NSCL(domain, cfg.model).to(device)
    opt, sched = build_optimizer(model, cfg)
    step = training_step_module(model, world, device)  # DDP broadcasts rank 0's weights
    if world.active:
        torch.manual_seed(cfg.seed + world.rank)  # each rank its own augmentation draws
    start = 1
    if resume:
        state = load_checkpoint(resume)
        if state["config"] != asdict(cfg):
            raise CheckpointError(f"{resume}: its config differs from this run's; resume with the same flags")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["epoch"]) + 1
        if world.active:
            torch.manual_seed(cfg.seed + 1000 * start + world.rank)
        run.resume_records(start)
        log.info("resumed from %s at epoch %d", resume, start)
    tb = None
    if use_tb and world.main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            tb = SummaryWriter(str(run.files.root / "tb"))
        except ImportError:
            log.warning("--use-tb: tensorboard is not installed (pip install 'nscl[tb]'); continuing without")
    vocab = None
    if paths.vocab.exists():
        vocab = list(Vocab.load(paths.vocab).words)
    metrics: dict[str, float] = {}
    table = tuple(tuple(int(v) for v in row) for row in cfg.curriculum_table) or RELEASE_TABLE
    for epoch in range(start, cfg.epochs + 1):
        stage = stage_at(epoch, cfg.epochs, table, enabled=cfg.curriculum != "off")
        ids = ds.eligible(train_ids, stage.max_objects, stage.max_length)
        te = time.time()
        rec: dict[str, Any] = {"epoch": epoch, "stage": stage.index, "lr": opt.param_groups[0]["lr"]}
        rec.update(train_one_epoch(model, ds, ids, opt, device, cfg, epoch, progress, step, world))
        sched.step()
        rec["seconds"] = time.time() - te
        last = epoch == cfg.epochs
        if world.main and (epoch % cfg.validation_interval == 0 or last):
            if len(dev_ids):
                rec.update(evaluate(model, ds, dev_ids, device, "validation", cfg.eval_batch_size))
            if extra is not None:
                rec.update(
                    evaluate(
                        model,
                        extra,
                        np.arange(len(extra)),
                        device,
                        "validationextra",
                        cfg.eval_batch_size,
                    )
                )
        metrics = {k: v for k, v in rec.items() if "/" in k}
        log.info(
            "epoch %d stage %d (S<=%d, L<=%d): %d questions, loss %.4f, train acc %.4f, %.1fs%s",
            epoch,
            stage.index,
            stage.max_objects,
            stage.max_length,
            rec["train/questions"],
            rec["train/loss"],
            rec["train/acc/qa"],
            rec["seconds"],
            "".join(f", {k} {v:.4f}" for k, v in rec.items() if k.endswith("acc/qa") and "valid" in k),
        )
        run.write(rec)
        if tb is not None:
            for k, v in rec.items():
                if isinstance(v, (int, float)):
                    tb.add_scalar(k, v, epoch)
        if world.main and (epoch % cfg.save_interval == 0 or last):
            state = checkpoint_state(model, cfg, domain, opt, sched, epoch, metrics, vocab)
            run.save(state)
            if not last:
                run.save(state, epoch)
        run.plot()
        barrier(world)  # the other ranks wait for rank 0's evaluation and checkpoint
    if tb is not None:
        tb.close()
    return run.result(metrics, model)
