"""Evaluation in the release's metric naming: QA accuracy per question type and concept accuracies of a model
(``{prefix}/acc/qa``, ``{prefix}/acc/concept/color`` ...), and a parser's program exact match and QA with its
programs (``acc/program_exact``, ``acc/qa_parsed``, ``acc/qa_guided``). ``nscl train --evaluate`` and every
training target report through these functions."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import Question, SplitPaths, load_split
from ..losses import Targets, qa_loss
from ..metrics import ConceptMeter, QAMeter, scene_annotations
from ..models.nscl import NSCL
from ..models.parser import Parser
from ..program import Program
from ..run_config import GUIDED_BEAM, MIN_REFERENT_P
from .dataset import QADataset, split_train_dev
from .examples import ParserExample, examples_from_questions, image_batches
from .execute import answer_targets, run_programs
from .guided import asked_kind, guided_parse
from .load import load
from .scenes import ModelScenes, SceneSource


@torch.no_grad()
def evaluate(
    model: NSCL,
    ds: QADataset,
    question_ids: np.ndarray,
    device: torch.device | str,
    prefix: str,
    batch_size: int = 256,
    concepts: bool = True,
) -> dict[str, float]:
    """Quantised (test-mode) QA accuracy per type, and concept accuracies on the images involved."""
    model.eval()
    qa = QAMeter()
    cm = ConceptMeter(ds.domain)
    # Concept accuracy needs annotated objects; detected objects (``objects_detection``) have none.
    annotated = all(o.attributes for s in ds.scenes for o in s.objects)
    anns = scene_annotations(ds.scenes, ds.domain) if concepts and annotated else None
    for qids in ds.batches(question_ids, batch_size, None):
        batch = ds.make_batch(qids).to(device)
        out, scene = model(batch.images, batch.boxes, batch.mask, batch.programs, quantize=True)
        _, correct, _ = qa_loss(out, Targets(batch.kind, batch.value))
        qa.update([ds.qtypes[i] for i in qids], correct.cpu().tolist())
        if anns is not None:
            cm.update(scene, [anns[i] for i in batch.image_ids.tolist()])
    metrics = qa.metrics(prefix)
    metrics.update(cm.metrics(prefix))
    return metrics


@torch.no_grad()
def evaluate_parser(
    parser: Parser,
    examples: Sequence[ParserExample],
    prefix: str,
    scenes: SceneSource | None = None,
    beam_size: int = 1,
    unknown: str = "error",
    batch_size: int = 256,
    guided_beam: int = 0,
    min_referent_p: float = MIN_REFERENT_P,
    check_kind: bool = False,
) -> dict[str, float]:
    """``{prefix}/acc/program_exact`` (canonical exact match, over annotated questions), and with a scene
    source ``{prefix}/acc/qa`` (ground-truth programs) and ``{prefix}/acc/qa_parsed`` (parsed programs),
    each also per question type; ``{prefix}/parse_errors`` counts questions the parser refused. With
    ``guided_beam`` > 0 and scenes, also ``{prefix}/acc/qa_guided`` and ``{prefix}/acc/program_exact_guided``
    (and per type): QA and exact match of execution-guided parses (:func:`guided_parse`, which ``nscl ask``
    uses), ``{prefix}/guided_changed``, how many parses the check replaced, and ``{prefix}/guided_refused``,
    how many it could not repair. ``check_kind`` also holds guided parses to the kind of answer the wording
    asks for (:func:`nscl.language.asked_answer`) and to every concept it names, as ``nscl ask`` does. ``unknown``: ``"error"`` refuses
    questions with words the parser never saw, ``"unk"`` reads those words as ``<UNK>``."""
    programs, errors = parser.parse_many([e.question for e in examples], beam_size, unknown, batch_size)
    metrics = _exact_metrics(examples, programs, prefix, "program_exact")
    metrics[f"{prefix}/parse_errors"] = float(sum(e is not None for e in errors))
    if scenes is not None:
        gt, parsed = qa_meters(parser, examples, programs, scenes, batch_size)
        if gt.total:
            metrics.update(gt.metrics(prefix))
        metrics.update({k.replace("/acc/qa", "/acc/qa_parsed"): v for k, v in parsed.metrics(prefix).items()})
        if guided_beam > 0:
            gp = guided_parse(
                parser,
                [e.question for e in examples],
                [e.image_index for e in examples],
                scenes,
                guided_beam,
                min_referent_p,
                batch_size,
                (programs, errors) if beam_size <= 1 else None,
                [asked_kind(parser, e.question) for e in examples] if check_kind else None,
                unknown,
                check_kind,
            )
            _, guided = qa_meters(parser, examples, gp.programs, scenes, batch_size, with_gt=False)
            metrics.update(
                {k.replace("/acc/qa", "/acc/qa_guided"): v for k, v in guided.metrics(prefix).items()}
            )
            metrics.update(_exact_metrics(examples, gp.programs, prefix, "program_exact_guided"))
            metrics[f"{prefix}/guided_changed"] = float(sum(r > 0 for r in gp.rank))
            metrics[f"{prefix}/guided_refused"] = float(
                sum(r < 0 or p is None for r, p in zip(gp.rank, gp.programs))
            )
    return metrics


def _exact_metrics(
    examples: Sequence[ParserExample], programs: Sequence[Program | None], prefix: str, name: str
) -> dict[str, float]:
    """``{prefix}/acc/{name}`` (and per final op): canonical exact match over the annotated examples; nothing
    when none is annotated."""
    exact = QAMeter()
    for e, p in zip(examples, programs):
        if e.program is not None:
            exact.update([e.program.final_op], [p is not None and p.canonical() == e.program.canonical()])
    if not exact.total:
        return {}
    return {k.replace("/acc/qa", f"/acc/{name}"): v for k, v in exact.metrics(prefix).items()}


def qa_meters(
    parser: Parser,
    examples: Sequence[ParserExample],
    programs: Sequence[Program | None],
    scenes: SceneSource,
    batch_size: int,
    with_gt: bool = True,
) -> tuple[QAMeter, QAMeter]:
    """QA of the ground-truth programs and of ``programs`` on the answered examples (test-mode execution)."""
    gt, parsed = QAMeter(), QAMeter()
    answered = [i for i, e in enumerate(examples) if e.answer is not None]
    sub = [examples[i] for i in answered]
    for idx in image_batches(sub, batch_size, None):
        batch = [sub[i] for i in idx]
        imgs = sorted({e.image_index for e in batch})
        row_of = {im: r for r, im in enumerate(imgs)}
        scene = scenes(imgs)
        rows = [row_of[e.image_index] for e in batch]
        tgt = answer_targets([e.answer for e in batch], parser.domain, scene.mask.device)  # type: ignore[misc]
        progs = [programs[answered[i]] for i in idx]
        out, valid = run_programs(progs, rows, scene, parser.domain, True)
        _, ok, _ = qa_loss(out, tgt)
        ok = (ok & valid).cpu().tolist()
        types = [e.qtype or (p.final_op if p is not None else "unknown") for e, p in zip(batch, progs)]
        parsed.update(types, ok)
        with_prog = [i for i, e in enumerate(batch) if e.program is not None] if with_gt else []
        if with_prog:
            out_g, _ = run_programs(
                [batch[i].program for i in with_prog],
                [rows[i] for i in with_prog],
                scene,
                parser.domain,
                True,
            )
            tgt_g = Targets(tgt.kind[with_prog], tgt.value[with_prog])
            _, ok_g, _ = qa_loss(out_g, tgt_g)
            gt.update([types[i] for i in with_prog], ok_g.cpu().tolist())
    return gt, parsed


def evaluate_parser_on_dataset(
    parser: Parser,
    model: NSCL,
    questions: Sequence[Question],
    ds: QADataset,
    question_ids: np.ndarray,
    prefix: str,
    device: torch.device | str = "cpu",
    guided_beam: int = GUIDED_BEAM,
    min_referent_p: float = MIN_REFERENT_P,
) -> dict[str, float]:
    """Parser metrics for the evaluation of a checkpoint with a parser: ``{prefix}/acc/program_exact``,
    ``{prefix}/acc/qa_parsed`` and ``qa_guided`` (and per type) and ``{prefix}/parse_errors`` on the QADataset
    questions ``question_ids`` (``questions``: the split's questions, which ``ds.q_index`` points into); guided
    parses are held to the wording as ``nscl ask`` holds them. The ground-truth ``acc/qa`` keys are left to
    :func:`evaluate`."""
    all_ex = examples_from_questions(questions, parser.domain)
    examples = [all_ex[int(ds.q_index[i])] for i in question_ids]
    m = evaluate_parser(
        parser,
        examples,
        prefix,
        ModelScenes(model, ds, device),
        guided_beam=guided_beam,
        min_referent_p=min_referent_p,
        check_kind=True,
    )
    return {k: v for k, v in m.items() if not k.startswith(f"{prefix}/acc/qa/") and k != f"{prefix}/acc/qa"}


def evaluate_checkpoint(
    ckpt: str | Path,
    paths: SplitPaths,
    extra_paths: SplitPaths | None,
    device: torch.device | str,
    progress: bool = True,
    data_split: float | None = None,
) -> dict[str, float]:
    """The release's ``--evaluate --load``: the dev part of ``paths`` as ``validation`` and the extra split as
    ``validationextra``. Everything else (settings, domain, the parser's guidance) comes from the checkpoint."""
    ck = load(ckpt, device)
    model, cfg, domain = ck.model, ck.config, ck.domain
    assert model is not None
    metrics: dict[str, float] = {}
    split = load_split(paths, domain)
    split.check_images()
    ds = QADataset(split, domain, cfg.image_height, progress)
    _, dev_ids = split_train_dev(ds, cfg.data_split if data_split is None else data_split, cfg.seed)
    if len(dev_ids) == 0:  # --data-split 1: evaluate on everything
        dev_ids = np.arange(len(ds))
    metrics.update(evaluate(model, ds, dev_ids, device, "validation", cfg.eval_batch_size))
    extra = extra_split = None
    if extra_paths is not None:
        extra_split = load_split(extra_paths, domain)
        extra_split.check_images()
        extra = QADataset(extra_split, domain, cfg.image_height, progress)
        metrics.update(
            evaluate(model, extra, np.arange(len(extra)), device, "validationextra", cfg.eval_batch_size)
        )
    if ck.parser is not None:
        guided = {"guided_beam": cfg.parser.guided_beam, "min_referent_p": cfg.parser.min_referent_p}
        metrics.update(
            evaluate_parser_on_dataset(
                ck.parser, model, split.questions, ds, dev_ids, "validation", device, **guided
            )
        )
        if extra is not None and extra_split is not None:
            metrics.update(
                evaluate_parser_on_dataset(
                    ck.parser,
                    model,
                    extra_split.questions,
                    extra,
                    np.arange(len(extra)),
                    "validationextra",
                    device,
                    **guided,
                )
            )
    return metrics
