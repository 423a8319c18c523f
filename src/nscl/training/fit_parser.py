"""``nscl train --training-target parser`` (:func:`fit_parser`) and ``--training-target all`` (:func:`fit_joint`).

parser: a parser trained on the split: supervised on ``cfg.parser.annotations`` stratified programs (all when 0);
then, with annotations > 0, REINFORCE on every training answer and rounds of self-training, rewarded by the frozen
NSCL of ``init`` (or oracle perception with ``parser.perception=oracle``). all: joint fine-tuning of the NSCL model
and parser stored in ``init``. Both validate on the dev part and the extra split and write ``checkpoint_last.pth``:
the NSCL checkpoint of ``init`` plus a ``parser`` entry (``models/parser.py: parser_state``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError
from ..data import Split, SplitPaths, load_split
from ..domain import Domain
from ..errors import NSCLError
from ..inference.dataset import QADataset
from ..inference.evaluate import evaluate_parser
from ..inference.examples import ParserExample, examples_from_questions, image_batches, split_by_image
from ..inference.load import Loaded, load
from ..inference.scenes import ModelScenes, OracleScenes, SceneSource
from ..models.executor import Compiler
from ..models.parser import Parser, parser_state
from ..run_config import ParserTrainConfig, TrainConfig
from .curves import plot_parser_curves
from .harness import FitResult, Run
from .joint import joint_step, make_joint_batch
from .parser_supervised import build_vocab, make_optimizer, stratified_subset, train_supervised
from .reinforce import MovingAverage, train_reinforce
from .self_training import PseudoLabels, self_train

log = logging.getLogger(__name__)


def checkpoint_with_parser(parser: Parser, base: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> dict:
    """A checkpoint state: ``base`` (an NSCL checkpoint state; its model stays as is) plus the parser. With
    no base the checkpoint holds only the parser and domain (no ``model``: ``nscl train --evaluate`` and
    ``ask`` refuse it with a clear message)."""
    state = {k: v for k, v in (base or {}).items() if k != "format"}
    if base is None:
        state["domain"] = parser.domain.to_dict()
    state.update(extra)
    state["parser"] = parser_state(parser)
    return state


@dataclass
class ParserData:
    """What a parser or joint run reads: the base checkpoint (None without ``--load``), the examples of the
    train and dev parts and of the extra split, and (with a model) their decoded datasets."""

    base: Loaded | None
    domain: Domain
    split: Split
    extra_split: Split | None
    train: list[ParserExample]
    dev: list[ParserExample]
    extra: list[ParserExample]
    ds: QADataset | None
    extra_ds: QADataset | None

    def scenes(self, which: str, pcfg: ParserTrainConfig, device: torch.device) -> SceneSource | None:
        """Scene logits of the ``train`` or ``extra`` split: the base model's, else the annotations' with
        ``parser.perception=oracle``, else None."""
        if self.base is not None and self.base.model is not None:
            ds = self.ds if which == "train" else self.extra_ds
            return ModelScenes(self.base.model, ds, device)  # type: ignore[arg-type]
        if pcfg.perception == "oracle":
            s = self.split if which == "train" else self.extra_split
            return OracleScenes(s.scenes, self.domain, device=device)  # type: ignore[union-attr]
        return None


def read_parser_data(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    extra_paths: SplitPaths | None,
    init: str | None,
    device: torch.device,
    progress: bool,
    train_scenes: bool = True,
) -> ParserData:
    """``train_scenes=False``: only the dev part's images are decoded for the model (enough to validate a
    supervised parser; REINFORCE, self-training and joint training perceive every training image)."""
    base = load(init, device) if init else None
    if base is not None and base.domain != domain:
        raise CheckpointError(f"{init}: its domain differs from --domain")
    split = load_split(paths, domain)
    examples = examples_from_questions(split.questions, domain)
    train_ex, dev_ex = split_by_image(examples, list(split.scenes), cfg.data_split, cfg.seed)
    extra_split = load_split(extra_paths, domain) if extra_paths is not None else None
    extra_ex = examples_from_questions(extra_split.questions, domain) if extra_split else []
    ds = extra_ds = None
    if base is not None and base.model is not None:
        split.check_images()
        perceived = split
        if not train_scenes:
            dev_images = {e.image_index for e in dev_ex}
            perceived = Split(
                split.paths,
                {i: sc for i, sc in split.scenes.items() if i in dev_images},
                [q for q in split.questions if q.image_index in dev_images],
            )
        ds = QADataset(perceived, domain, cfg.image_height, progress)
        if extra_split is not None:
            extra_split.check_images()
            extra_ds = QADataset(extra_split, domain, cfg.image_height, progress)
    return ParserData(base, domain, split, extra_split, train_ex, dev_ex, extra_ex, ds, extra_ds)


def _validate(data: ParserData, parser: Parser, pcfg: ParserTrainConfig, device: torch.device) -> dict:
    guided = {"guided_beam": pcfg.guided_beam, "min_referent_p": pcfg.min_referent_p, "check_kind": True}
    rec: dict[str, float] = {}
    if data.dev:
        rec.update(
            evaluate_parser(parser, data.dev, "validation", data.scenes("train", pcfg, device), **guided)
        )
    if data.extra:
        rec.update(
            evaluate_parser(
                parser, data.extra, "validationextra", data.scenes("extra", pcfg, device), **guided
            )
        )
    return rec


def _finish(run: Run, parser: Parser, data: ParserData, cfg: TrainConfig, model_trained: bool) -> FitResult:
    records = run.records
    metrics = {k: v for k, v in records[-1].items() if "/" in k} if records else {}
    extra_state: dict[str, Any] = {"metrics": metrics, "epoch": records[-1]["epoch"] if records else 0}
    base = data.base.state if data.base is not None else None
    model = data.base.model if data.base is not None else None
    if model_trained and model is not None:
        extra_state["model"] = model.state_dict()
        extra_state["optimizer"] = None
        extra_state["scheduler"] = None
    if base is None:
        extra_state["config"] = asdict(cfg)
    run.save(checkpoint_with_parser(parser, base, extra_state))
    run.plot()
    return run.result(metrics, model)


def fit_parser(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    run_dir: str | Path,
    device: torch.device,
    extra_paths: SplitPaths | None = None,
    init: str | None = None,
    progress: bool = True,
) -> FitResult:
    """``--training-target parser`` (module docstring); ``init``: the NSCL checkpoint to start from."""
    pcfg = cfg.parser
    do_rl = pcfg.annotations > 0 and pcfg.reinforce_epochs > 0
    do_st = pcfg.annotations > 0 and pcfg.self_train_epochs > 0 and pcfg.self_train_rounds > 0
    with Run(run_dir, cfg, plot_parser_curves) as run:
        data = read_parser_data(cfg, domain, paths, extra_paths, init, device, progress, do_rl or do_st)
        if data.base is not None and data.base.model is not None:
            data.base.model.requires_grad_(False)
        annotated = [e for e in data.train if e.program is not None]
        if pcfg.annotations > 0:
            annotated = [annotated[i] for i in stratified_subset(annotated, pcfg.annotations, cfg.seed)]
        train_scenes = data.scenes("train", pcfg, device) if do_rl or do_st else None
        if (do_rl or do_st) and train_scenes is None:
            raise NSCLError(
                "--parser-annotations K trains the parser from answers (REINFORCE, self-training), which needs "
                "a trained perception: give --load NSCL_CHECKPOINT (or --set parser.perception=oracle, or "
                "--set parser.reinforce_epochs=0 --set parser.self_train_epochs=0)"
            )
        if pcfg.init == "load":
            if data.base is None or data.base.parser is None:
                raise NSCLError(
                    "parser.init=load continues a parser: give --load with a checkpoint holding one"
                )
            parser = data.base.parser.to(device)
        else:
            parser = Parser(domain, build_vocab(data.train), pcfg.model).to(device)
        log.info(
            "parser: %d annotated programs of %d training questions; dev %d; extra %d",
            len(annotated),
            len(data.train),
            len(data.dev),
            len(data.extra),
        )
        interval = max(1, cfg.validation_interval)

        def stage_epoch(stage: str, first: int, last: int):  # noqa: ANN202 - an epoch callback
            def done(epoch: int, rec: dict[str, Any]) -> None:
                rec["stage"] = stage
                rec["epoch"] = first + epoch
                if data.dev and (epoch % interval == 0 or epoch == last):
                    rec.update(evaluate_parser(parser, data.dev, "validation"))
                run.write(rec)

            return done

        def sup_epoch(epoch: int, rec: dict[str, Any]) -> None:
            rec["stage"] = "supervised"
            if epoch % interval == 0 and data.dev:
                rec.update(evaluate_parser(parser, data.dev, "validation"))
            run.write(rec)

        n_sup = len(train_supervised(parser, annotated, pcfg, cfg.seed, sup_epoch))
        if do_rl:
            rl_epoch = stage_epoch("reinforce", n_sup, pcfg.reinforce_epochs)
            train_reinforce(parser, data.train, train_scenes, pcfg, annotated, cfg.seed, rl_epoch)  # type: ignore[arg-type]
        if do_st:
            callbacks: dict[int, Any] = {}

            def on_round(rnd: int, _: PseudoLabels) -> None:
                first = run.records[-1]["epoch"] if run.records else 0
                callbacks[rnd] = stage_epoch(f"self-training {rnd}", first, pcfg.self_train_epochs)

            def on_epoch(rnd: int, epoch: int, rec: dict[str, Any]) -> None:
                callbacks[rnd](epoch, rec)

            self_train(parser, data.train, train_scenes, annotated, pcfg, cfg.seed, on_round, on_epoch)  # type: ignore[arg-type]
        final: dict[str, Any] = {"epoch": (run.records[-1]["epoch"] if run.records else 0), "stage": "final"}
        final.update(_validate(data, parser, pcfg, device))
        run.write(final)
        return _finish(run, parser, data, cfg, model_trained=False)


def fit_joint(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    run_dir: str | Path,
    device: torch.device,
    extra_paths: SplitPaths | None = None,
    init: str | None = None,
    progress: bool = True,
) -> FitResult:
    """``--training-target all``: ``cfg.epochs`` epochs of :func:`joint_step` from the model and parser of
    ``init``."""
    pcfg = cfg.parser
    with Run(run_dir, cfg, plot_parser_curves) as run:
        data = read_parser_data(cfg, domain, paths, extra_paths, init, device, progress)
        if data.base is None or data.base.model is None or data.base.parser is None:
            raise NSCLError(
                "--training-target all fine-tunes a trained model and parser: give --load with a "
                "checkpoint holding both (train the parser with --training-target parser --load)"
            )
        model, parser = data.base.model, data.base.parser.to(device)
        model.requires_grad_(True)
        params = list(model.parameters()) + list(parser.parameters())
        opt = make_optimizer(params, cfg.lr, cfg.weight_decay)
        baseline = MovingAverage(pcfg.baseline_momentum)
        compiler = Compiler(domain)
        usable = [e for e in data.train if e.answer is not None]
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.time()
            rng = np.random.default_rng([cfg.seed, epoch])
            tot: dict[str, float] = defaultdict(float)
            for idx in image_batches(usable, cfg.batch_size, rng):
                jb = make_joint_batch([usable[i] for i in idx], data.ds, domain, device)  # type: ignore[arg-type]
                s = joint_step(model, parser, jb, opt, pcfg, baseline, compiler)
                for k in ("loss", "acc", "reward"):
                    tot[k] += s[k] * s["n"]
                tot["n"] += s["n"]
            n = max(tot["n"], 1)
            rec = {
                "epoch": epoch,
                "stage": "joint",
                "train/loss": tot["loss"] / n,
                "train/acc/qa_parsed": tot["acc"] / n,
                "train/parser_reward": tot["reward"] / n,
                "seconds": time.time() - t0,
            }
            if epoch % cfg.validation_interval == 0 or epoch == cfg.epochs:
                rec.update(_validate(data, parser, pcfg, device))
            log.info(
                "joint epoch %d: loss %.4f, train acc %.4f, reward %.4f%s",
                epoch,
                rec["train/loss"],
                rec["train/acc/qa_parsed"],
                rec["train/parser_reward"],
                "".join(
                    f", {k} {v:.4f}"
                    for k, v in rec.items()
                    if k.startswith("valid") and "/acc/qa" in k and k.count("/") == 2
                ),
            )
            run.write(rec)
        return _finish(run, parser, data, cfg, model_trained=True)
