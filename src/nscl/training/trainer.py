"""Training and evaluation loops as plain functions, with the release's flags and metric names."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import from_dict
from ..data import SplitPaths, load_split
from ..domain import Domain
from ..errors import NSCLError
from ..losses import Targets, qa_loss
from ..metrics import ConceptMeter, QAMeter, scene_annotations
from ..models.nscl import NSCL, ModelConfig
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .curriculum import RELEASE_TABLE, stage_at
from .data import QADataset
from .parser_training import ParserTrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    training_target: str = "derender"
    curriculum: str = "all"  # "all" | "off"
    # [(last reference epoch, max objects, max raw program length), ...] for a 100-epoch run, scaled to
    # `epochs`; empty = the release's table (training/curriculum.py).
    curriculum_table: tuple[tuple[int, int, int], ...] = ()
    batch_size: int = 32  # questions per batch (grouped by image)
    eval_batch_size: int = 256
    epochs: int = 100
    validation_interval: int = 5
    save_interval: int = 5
    data_split: float = 0.95  # fraction of training images kept for training; the rest is the dev split
    data_trim: float = 0.0  # keep only this fraction (0 < f < 1) or this many (f >= 1) training questions
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay_at: float = 0.6  # lr x 0.1 after this fraction of the epochs
    # An epoch whose curriculum stage admits fewer questions than this repeats them (reshuffled) up to this
    # many, so that short early lessons on small datasets still get enough optimisation steps.
    min_questions_per_epoch: int = 0
    image_height: int = 128
    seed: int = 0
    threads: int = 0  # torch CPU threads, 0 = default
    model: ModelConfig = field(default_factory=ModelConfig)
    parser: ParserTrainConfig = field(default_factory=ParserTrainConfig)  # --training-target parser|all


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NSCLError(f"--device {name}: CUDA is not available on this machine")
    return dev


@dataclass
class RunFiles:
    """What a run directory holds."""

    root: Path

    @property
    def log(self) -> Path:
        return self.root / "train.log"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.root / "curves.png"

    def checkpoint(self, epoch: int | None = None) -> Path:
        return self.root / ("checkpoint_last.pth" if epoch is None else f"checkpoint_epoch_{epoch}.pth")


def split_train_dev(ds: QADataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Question ids of the train and dev parts, split by image (the release's --data-split)."""
    n_img = len(ds.scenes)
    perm = np.random.default_rng([seed, 7]).permutation(n_img)
    if fraction >= 1:
        n_train = n_img
    elif fraction <= 0:
        n_train = 0
    else:
        n_train = max(1, min(n_img - 1, round(n_img * fraction)))
    is_train = np.zeros(n_img, dtype=bool)
    is_train[perm[:n_train]] = True
    q = np.arange(len(ds))
    return q[is_train[ds.q_image]], q[~is_train[ds.q_image]]


@torch.no_grad()
def evaluate(
    model: NSCL,
    ds: QADataset,
    question_ids: np.ndarray,
    device: torch.device,
    prefix: str,
    batch_size: int = 256,
    concepts: bool = True,
) -> dict[str, float]:
    """Quantised (test-mode) QA accuracy per type, and concept accuracies on the images involved."""
    model.eval()
    qa = QAMeter()
    cm = ConceptMeter(ds.domain)
    anns = scene_annotations(ds.scenes, ds.domain) if concepts else None
    for qids in ds.batches(question_ids, batch_size, None):
        batch = ds.make_batch(qids).to(device)
        out, scene = model(batch.images, batch.boxes, batch.mask, batch.programs, quantize=True)
        _, correct, _ = qa_loss(out, Targets(batch.kind, batch.value))
        qa.update([ds.qtypes[i] for i in qids], correct.cpu().tolist())
        if anns is not None and all(ds.scenes[i].objects[0].attributes for i in batch.image_ids.tolist()):
            cm.update(scene, [anns[i] for i in batch.image_ids.tolist()])
    metrics = qa.metrics(prefix)
    metrics.update(cm.metrics(prefix))
    return metrics


def _trim(ids: np.ndarray, trim: float, seed: int) -> np.ndarray:
    if trim <= 0:
        return ids
    n = int(trim) if trim >= 1 else max(1, int(len(ids) * trim))
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
    from tqdm import tqdm

    model.train()
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = list(ds.batches(ids, cfg.batch_size, rng))
    # Short curriculum lessons: repeat reshuffled passes until min_questions_per_epoch questions.
    n = len(ids)
    while 0 < n < cfg.min_questions_per_epoch:
        batches += list(ds.batches(ids, cfg.batch_size, rng))
        n += len(ids)
    tot_loss, tot_ok, tot_n = 0.0, 0, 0
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=not progress, unit="batch", leave=False)
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


def plot_curves(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ep = [r["epoch"] for r in records]
    ax1.plot(ep, [r["train/loss"] for r in records], label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.plot(ep, [r["train/acc/qa"] for r in records], label="train acc")
    for key in ("validation/acc/qa", "validationextra/acc/qa"):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    save_figure(fig, path)


def save_figure(fig, path: Path) -> None:  # noqa: ANN001 - a matplotlib Figure
    """Write a figure as PNG atomically and close it."""
    import io as _io

    import matplotlib.pyplot as plt

    from ..io import atomic_write

    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def checkpoint_state(
    model: NSCL,
    cfg: TrainConfig,
    domain: Domain,
    opt,
    sched,
    epoch: int,  # noqa: ANN001
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


def model_from_checkpoint(state: dict, source: str = "checkpoint") -> tuple[NSCL, TrainConfig, Domain]:
    cfg = from_dict(TrainConfig, state["config"])
    domain = Domain.from_dict(state["domain"], source)
    model = NSCL(domain, cfg.model)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{source}: weights do not match the model in its config ({str(e).splitlines()[0]})"
        ) from None
    return model, cfg, domain


@dataclass
class FitResult:
    metrics: dict[str, float]
    checkpoint: Path
    run: RunFiles
    seconds: float
    model: NSCL = field(repr=False)


def fit(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    run_dir: str | Path,
    device: torch.device,
    extra_paths: SplitPaths | None = None,
    resume: str | None = None,
    progress: bool = True,
    use_tb: bool = False,
    init: str | None = None,
) -> FitResult:
    """Train on ``paths`` (minus the dev part), validate on dev and on the extra split, save checkpoints.

    ``training_target`` parser/all hands over to :func:`parser_training.fit_parser_target` (``init``: the
    NSCL checkpoint to start from)."""
    if cfg.training_target in ("parser", "all"):
        from .parser_training import fit_parser_target

        if resume:
            raise NSCLError("--resume is not supported with --training-target parser|all")
        return fit_parser_target(
            cfg, domain, paths, run_dir, device, extra_paths, init=init, progress=progress
        )
    t0 = time.time()
    run = RunFiles(Path(run_dir))
    run.root.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    handler.setLevel(logging.INFO)
    nscl_log = logging.getLogger("nscl")
    old_level = nscl_log.level
    if (
        nscl_log.getEffectiveLevel() > logging.INFO
    ):  # the run log always gets INFO, whatever the console shows
        nscl_log.setLevel(logging.INFO)
    nscl_log.addHandler(handler)
    try:
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        train_split = load_split(paths, domain)
        train_split.check_images()
        ds = QADataset(train_split, domain, cfg.image_height, progress)
        train_ids, dev_ids = split_train_dev(ds, cfg.data_split, cfg.seed)
        train_ids = _trim(train_ids, cfg.data_trim, cfg.seed)
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
        records: list[dict] = []
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
            if run.metrics.exists():
                records = [json.loads(line) for line in run.metrics.read_text().splitlines() if line.strip()]
                records = [r for r in records if r["epoch"] < start]
                from ..io import atomic_write_text

                atomic_write_text(run.metrics, "".join(json.dumps(r) + "\n" for r in records))
            log.info("resumed from %s at epoch %d", resume, start)
        tb = None
        if use_tb:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(str(run.root / "tb"))
            except ImportError:
                log.warning(
                    "--use-tb: tensorboard is not installed (pip install 'nscl[tb]'); continuing without"
                )
        vocab = None
        if paths.vocab.exists():
            from ..vocab import Vocab

            vocab = list(Vocab.load(paths.vocab).words)
        metrics: dict[str, float] = {}
        for epoch in range(start, cfg.epochs + 1):
            table = tuple(tuple(int(v) for v in row) for row in cfg.curriculum_table) or RELEASE_TABLE
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
            records.append(rec)
            with run.metrics.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            if tb is not None:
                for k, v in rec.items():
                    if isinstance(v, (int, float)):
                        tb.add_scalar(k, v, epoch)
            if epoch % cfg.save_interval == 0 or last:
                state = checkpoint_state(model, cfg, domain, opt, sched, epoch, metrics, vocab)
                save_checkpoint(run.checkpoint(), state)
                if not last:
                    save_checkpoint(run.checkpoint(epoch), state)
            plot_curves(records, run.curves)
        if tb is not None:
            tb.close()
        return FitResult(metrics, run.checkpoint(), run, time.time() - t0, model)
    finally:
        nscl_log.removeHandler(handler)
        nscl_log.setLevel(old_level)
        handler.close()


def evaluate_checkpoint(
    ckpt: str | Path,
    paths: SplitPaths,
    extra_paths: SplitPaths | None,
    device: torch.device,
    progress: bool = True,
    data_split: float | None = None,
) -> dict[str, float]:
    """The release's ``--evaluate --load``: the dev part of ``paths`` as ``validation`` and the extra split as
    ``validationextra``. Everything else (config, domain) comes from the checkpoint."""
    state = load_checkpoint(ckpt)
    model, cfg, domain = model_from_checkpoint(state, str(ckpt))
    model.to(device)
    metrics: dict[str, float] = {}
    split = load_split(paths, domain)
    split.check_images()
    ds = QADataset(split, domain, cfg.image_height, progress)
    _, dev_ids = split_train_dev(ds, cfg.data_split if data_split is None else data_split, cfg.seed)
    if len(dev_ids) == 0:  # --data-split 1: evaluate on everything
        dev_ids = np.arange(len(ds))
    metrics.update(evaluate(model, ds, dev_ids, device, "validation", cfg.eval_batch_size))
    if extra_paths is not None:
        extra_split = load_split(extra_paths, domain)
        extra_split.check_images()
        extra = QADataset(extra_split, domain, cfg.image_height, progress)
        metrics.update(
            evaluate(model, extra, np.arange(len(extra)), device, "validationextra", cfg.eval_batch_size)
        )
    if state.get("parser"):
        from ..models.parser import parser_from_state
        from .parser_training import evaluate_parser_on_dataset

        parser = parser_from_state(state["parser"], domain, str(ckpt)).to(device)
        metrics.update(
            evaluate_parser_on_dataset(parser, model, split.questions, ds, dev_ids, "validation", device)
        )
        if extra_paths is not None:
            metrics.update(
                evaluate_parser_on_dataset(
                    parser,
                    model,
                    extra_split.questions,
                    extra,
                    np.arange(len(extra)),
                    "validationextra",
                    device,
                )
            )
    return metrics
