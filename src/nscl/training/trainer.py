"""``nscl train --training-target derender``: perception and concepts learned from questions, answers and the
given programs, with the release's curriculum, flags and metric names (NSCL-REFERENCE section 7)."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, load_checkpoint
from ..data import SplitPaths, load_split
from ..domain import Domain
from ..inference.dataset import QADataset, split_train_dev
from ..inference.evaluate import evaluate
from ..losses import Targets, qa_loss
from ..models.nscl import NSCL
from ..progress import progress_bar
from ..run_config import TrainConfig
from ..vocab import Vocab
from .curriculum import RELEASE_TABLE, stage_at
from .curves import plot_curves
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
    milestone = max(1, math.ceil(cfg.epochs * cfg.lr_decay_at))
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[milestone], gamma=0.1)
    return opt, sched


def train_one_epoch(
    model: NSCL,
    ds: QADataset,
    ids: np.ndarray,
    opt: torch.optim.Optimizer,
    device: torch.device,
    cfg: TrainConfig,
    epoch: int,
    progress: bool = True,
) -> dict[str, float]:
    """One pass over the question ids ``ids`` (repeated up to ``cfg.min_questions_per_epoch``), batched by
    image; returns ``train/loss``, ``train/acc/qa`` and ``train/questions``."""
    model.train()
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = list(ds.batches(ids, cfg.batch_size, rng))
    # Short curriculum lessons: repeat reshuffled passes until min_questions_per_epoch questions.
    n = len(ids)
    while 0 < n < cfg.min_questions_per_epoch:
        batches += list(ds.batches(ids, cfg.batch_size, rng))
        n += len(ids)
    tot_loss, tot_ok, tot_n = 0.0, 0, 0
    bar = progress_bar(batches, progress, desc=f"epoch {epoch}", unit="batch", leave=False)
    for qids in bar:
        batch = ds.make_batch(qids).to(device)
        out, _ = model(batch.images, batch.boxes, batch.mask, batch.programs)
        loss, correct, _ = qa_loss(out, Targets(batch.kind, batch.value))
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        tot_loss += float(loss.detach().sum())
        tot_ok += int(correct.sum())
        tot_n += len(qids)
        bar.set_postfix(loss=f"{tot_loss / tot_n:.3f}", acc=f"{tot_ok / tot_n:.3f}")
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
    ``resume`` continues a run exactly (weights, optimiser, schedule, RNG, curriculum stage)."""
    with Run(run_dir, cfg, plot_curves) as run:
        train_split = load_split(paths, domain)
        train_split.check_images()
        ds = QADataset(train_split, domain, cfg.image_height, progress)
        train_ids, dev_ids = split_train_dev(ds, cfg.data_split, cfg.seed)
        train_ids = trim(train_ids, cfg.data_trim, cfg.seed)
        extra = None
        if extra_paths is not None:
            extra_split = load_split(extra_paths, domain)
            extra_split.check_images()
            extra = QADataset(extra_split, domain, cfg.image_height, progress)
        log.info(
            "train: %d questions on %d images; dev: %d questions; extra: %s",
            len(train_ids),
            len(np.unique(ds.q_image[train_ids])),
            len(dev_ids),
            len(extra) if extra else "none",
        )
        model = NSCL(domain, cfg.model).to(device)
        opt, sched = build_optimizer(model, cfg)
        start = 1
        if resume:
            state = load_checkpoint(resume)
            if state["config"] != asdict(cfg):
                raise CheckpointError(
                    f"{resume}: its config differs from this run's; resume with the same flags"
                )
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            start = int(state["epoch"]) + 1
            run.resume_records(start)
            log.info("resumed from %s at epoch %d", resume, start)
        tb = None
        if use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(run.files.root / "tb"))
            except ImportError:
                log.warning(
                    "--use-tb: tensorboard is not installed (pip install 'nscl[tb]'); continuing without"
                )
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
            rec.update(train_one_epoch(model, ds, ids, opt, device, cfg, epoch, progress))
            sched.step()
            rec["seconds"] = time.time() - te
            last = epoch == cfg.epochs
            if epoch % cfg.validation_interval == 0 or last:
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
            if epoch % cfg.save_interval == 0 or last:
                state = checkpoint_state(model, cfg, domain, opt, sched, epoch, metrics, vocab)
                run.save(state)
                if not last:
                    run.save(state, epoch)
            run.plot()
        if tb is not None:
            tb.close()
        return run.result(metrics, model)
