"""Training and evaluating the semantic parser (NSCL-REFERENCE sections 5 and 7).

* supervised: teacher forcing on translated NS-CL programs (cross-entropy over ops and pointer positions);
* few annotations: K annotated programs, stratified over question families, then REINFORCE on answers with a
  frozen perception (an NSCL checkpoint, or oracle scene logits as a diagnostic): sampled programs run on the
  batched executor, reward 1 for a right (quantised) answer whose references are unambiguous, minus a
  leave-one-out or moving-average baseline; or the release's variant (reward 10 - QA loss, weights
  softmax-normalised over each question's sampled candidates); then rounds of self-training on the most
  probable rewarded program of each question (``pseudo_label``);
* joint fine-tuning (``--training-target all``): one step trains perception and concepts with the QA loss of
  the parser's programs and the parser with REINFORCE;
* evaluation: program exact match (``Program.canonical``), QA with ground-truth programs (``acc/qa``), with
  parsed programs (``acc/qa_parsed``) and with execution-guided parses (``acc/qa_guided``, ``guided_parse``),
  in the release's metric naming;
* ``parse_questions_file``: a questions.json whose programs are the parser's.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..data import Question, Scene, SplitPaths, load_split
from ..domain import Domain
from ..errors import DataError, NSCLError, ProgramError
from ..io import read_json
from ..losses import Targets, qa_loss
from ..metrics import QAMeter
from ..models.executor import AnswerKinds, Compiler, Executor, Output, ProgramBatch, SceneLogits
from ..models.parser import Parser, ParserConfig, parser_from_state, parser_state
from ..program import ClevrNode, ClevrProgram, Node, Program, translate
from ..vocab import SPECIALS as SPECIAL_WORDS
from ..vocab import UNK, Vocab
from .checkpoint import FORMAT, CheckpointError, save_checkpoint

log = logging.getLogger(__name__)

REWARDS = ("answer", "release")
PERCEPTIONS = ("model", "oracle")
BASELINES = ("moving", "loo")


@dataclass(frozen=True)
class ParserTrainConfig:
    """Parser training (``TrainConfig.parser`` when nested; ``--set parser.epochs=40``)."""

    annotations: int = 0  # K annotated programs (stratified by family); 0 = every annotated question
    epochs: int = 15  # supervised epochs over the annotated questions ...
    min_steps: int = 500  # ... but at least this many optimiser steps (few annotations: more epochs)
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    grad_clip: float = 5.0
    reinforce_epochs: int = 10  # after supervised training, when annotations > 0
    reinforce_lr: float = 2e-4
    reinforce_batch_size: int = 64  # questions per step
    samples: int = 4  # sampled programs per question
    reward: str = "answer"  # "answer": 1 if right, minus `baseline`; "release": 10 - QA loss, softmax
    baseline_momentum: float = 0.9
    # "answer" reward's baseline: "moving" (moving average of the mean reward) or "loo" (leave-one-out: the
    # mean reward of the question's other samples, so only questions with both right and wrong samples move)
    baseline: str = "loo"
    entropy_weight: float = 0.0
    # self-training after REINFORCE, self_train_rounds times: label every training question with the most
    # probable program that earns the reward (greedy, else a beam candidate; pseudo_label) and fit them, with
    # the K annotations, for self_train_epochs supervised epochs at self_train_lr. A later round relabels with
    # the sharper parser, so a phrasing whose labels were split between two programs settles on the right one.
    self_train_epochs: int = 3
    self_train_rounds: int = 2
    self_train_lr: float = 5e-4
    supervised_weight: float = 1.0  # REINFORCE steps also fit a batch of the K annotations
    word_dropout: float = 0.0  # supervised: read ordinary words as <UNK> with this probability
    # "new": a fresh parser; "load": continue from the parser of the --load checkpoint (e.g. more REINFORCE
    # epochs with parser.epochs=0; the K annotations are drawn as before, with the same seed)
    init: str = "new"
    perception: str = "model"  # reward executor: "model" (frozen NSCL of --load) or "oracle" (scene labels)
    # CLEVR questions only refer to single objects unambiguously: a sampled program whose references hold
    # exactly one object with probability below this (Output.referent_logp) earns no reward, however it
    # answers, and execution-guided decoding (guided_beam > 0) rejects such parses. 0 turns the check off.
    min_referent_p: float = 0.05
    guided_beam: int = 8  # evaluation: beam of execution-guided decoding (acc/qa_guided); 0 = off
    model: ParserConfig = field(default_factory=ParserConfig)

    def __post_init__(self) -> None:
        from ..config import ConfigError

        if self.reward not in REWARDS:
            raise ConfigError(f"parser.reward must be one of {', '.join(REWARDS)}, not {self.reward!r}")
        if self.baseline not in BASELINES:
            raise ConfigError(f"parser.baseline must be one of {', '.join(BASELINES)}, not {self.baseline!r}")
        if not 0.0 <= self.min_referent_p < 1.0:
            raise ConfigError(f"parser.min_referent_p must be in [0, 1), not {self.min_referent_p}")
        if self.guided_beam < 0:
            raise ConfigError(f"parser.guided_beam must be >= 0, not {self.guided_beam}")
        if self.self_train_epochs < 0 or self.self_train_rounds < 0:
            raise ConfigError("parser.self_train_epochs and parser.self_train_rounds must be >= 0")
        if self.init not in ("new", "load"):
            raise ConfigError(f"parser.init must be new or load, not {self.init!r}")
        if self.perception not in PERCEPTIONS:
            raise ConfigError(
                f"parser.perception must be one of {', '.join(PERCEPTIONS)}, not {self.perception!r}"
            )


# --------------------------------------------------------------------------------------------- examples
@dataclass(frozen=True)
class ParserExample:
    """One question for the parser: text, image, answer, and the NS-CL program where annotated."""

    question: str
    image_index: int
    answer: str | None
    program: Program | None
    family: int | None = None
    index: int = 0  # position in questions.json

    @property
    def qtype(self) -> str | None:
        """Question type by the final op of the ground-truth program (the release's per-type naming)."""
        return self.program.final_op if self.program is not None else None


def examples_from_questions(questions: Sequence[Question], domain: Domain) -> list[ParserExample]:
    """Parser examples; raw programs NS-CL cannot express (``equal_object``) count as unannotated."""
    out = []
    for q in questions:
        prog = None
        if q.program is not None:
            try:
                prog = translate(q.program, domain)
            except ProgramError:
                prog = None
        out.append(ParserExample(q.question, q.image_index, q.answer, prog, q.family, q.index))
    return out


def stratified_subset(examples: Sequence[ParserExample], k: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` annotated examples spread evenly over question families (three per family for
    K = 270 and CLEVR's 90 families): families are visited round-robin, each in a seeded random order."""
    rng = np.random.default_rng([seed, 13])
    by_family: dict[Any, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        if e.program is not None:
            by_family[e.family].append(i)
    queues = [list(rng.permutation(v)) for _, v in sorted(by_family.items(), key=lambda kv: str(kv[0]))]
    chosen: list[int] = []
    while len(chosen) < k and any(queues):
        for qu in queues:
            if qu and len(chosen) < k:
                chosen.append(int(qu.pop()))
    return sorted(chosen)


def build_vocab(examples: Sequence[ParserExample]) -> Vocab:
    return Vocab.build(e.question for e in examples)


def split_by_image(
    examples: Sequence[ParserExample], image_indices: Sequence[int], fraction: float, seed: int
) -> tuple[list[ParserExample], list[ParserExample]]:
    """Train and dev examples, split by image exactly like the trainer's ``--data-split``."""
    order = sorted(image_indices)
    n_img = len(order)
    perm = np.random.default_rng([seed, 7]).permutation(n_img)
    n_train = n_img if fraction >= 1 else max(1, min(n_img - 1, round(n_img * fraction)))
    train_imgs = {order[i] for i in perm[:n_train]}
    train = [e for e in examples if e.image_index in train_imgs]
    dev = [e for e in examples if e.image_index not in train_imgs]
    return train, dev


# --------------------------------------------------------------------------------------------- supervised
@dataclass
class _Target:
    ids: list[int]
    slots: np.ndarray  # (L,)
    masks: np.ndarray  # (L, F + T)
    targets: np.ndarray  # (L, F + T)


def build_targets(parser: Parser, examples: Sequence[ParserExample]) -> tuple[list[_Target], list[int]]:
    """Teacher-forcing targets of every annotated example, and the indices of those it skipped (unknown
    words, programs the question cannot express)."""
    items, skipped = [], []
    for i, e in enumerate(examples):
        if e.program is None:
            skipped.append(i)
            continue
        enc, errs = parser.encode_questions([e.question], "unk")
        q = enc.info[0]
        try:
            slots, masks, targets = parser.grammar.target(e.program, q, parser.cfg.max_length)
        except ProgramError as err:
            log.debug("question %d (%s): not a parser target: %s", e.index, e.question, err)
            skipped.append(i)
            continue
        items.append(_Target(enc.ids[0, : len(q)].tolist(), slots, masks, targets))
    return items, skipped


def _collate(items: Sequence[_Target], F_: int) -> dict[str, Tensor]:
    B = len(items)
    T = max(len(it.ids) for it in items)
    L = max(len(it.slots) for it in items)
    ids = torch.zeros(B, T, dtype=torch.long)
    slots = torch.zeros(B, L, dtype=torch.long)
    masks = torch.zeros(B, L, F_ + T, dtype=torch.bool)
    targets = torch.zeros(B, L, F_ + T, dtype=torch.bool)
    for b, it in enumerate(items):
        t, l = len(it.ids), len(it.slots)
        ids[b, :t] = torch.tensor(it.ids)
        slots[b, :l] = torch.from_numpy(it.slots)
        masks[b, :l, : F_ + t] = torch.from_numpy(it.masks)
        targets[b, :l, : F_ + t] = torch.from_numpy(it.targets)
    return {
        "ids": ids,
        "lengths": torch.tensor([len(it.ids) for it in items]),
        "slots": slots,
        "masks": masks,
        "targets": targets,
        "steps": torch.tensor([len(it.slots) for it in items]),
    }


def supervised_loss(parser: Parser, items: Sequence[_Target], word_dropout: float = 0.0) -> Tensor:
    """Mean per-program negative log-likelihood of a batch of targets. ``word_dropout``: each ordinary word
    (not a lexicon class) is read as ``<UNK>`` with this probability, so that the parser copes with words it
    never saw (``parse_many(..., unknown="unk")``)."""
    device = parser.embed.weight.device
    batch = _collate(items, parser.grammar.num_fixed)
    if word_dropout > 0:
        ids = batch["ids"]
        words = (ids >= len(SPECIAL_WORDS)) & (ids < len(parser.vocab))
        ids[words & (torch.rand(ids.shape) < word_dropout)] = parser.vocab.index[UNK]
    b = {k: v.to(device) for k, v in batch.items()}
    return parser.teacher_forcing_loss(
        b["ids"], b["lengths"], b["slots"], b["masks"], b["targets"], b["steps"]
    ).mean()


def make_optimizer(
    params: Sequence[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)


def train_supervised(
    parser: Parser,
    examples: Sequence[ParserExample],
    cfg: ParserTrainConfig,
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Teacher forcing on the annotated ``examples`` for ``cfg.epochs`` epochs, or more to make at least
    ``cfg.min_steps`` steps; returns per-epoch records (``train/parser_loss``). ``on_epoch(epoch, record)``
    may add validation metrics to the record."""
    items, skipped = build_targets(parser, examples)
    if not items:
        raise NSCLError("no annotated question can be used to train the parser")
    if skipped:
        log.info("parser: %d of %d questions are not usable targets", len(skipped), len(examples))
    opt = make_optimizer(parser.parameters(), cfg.lr, cfg.weight_decay)
    rng = np.random.default_rng([seed, 17])
    history = []
    steps_per_epoch = max(1, math.ceil(len(items) / cfg.batch_size))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch)) if cfg.epochs > 0 else 0
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(1, epochs * steps_per_epoch), pct_start=0.1
        )
        if epochs > 0
        else None
    )
    for epoch in range(1, epochs + 1):
        parser.train()
        order = rng.permutation(len(items))
        tot, n = 0.0, 0
        t0 = time.time()
        for s in range(0, len(order), cfg.batch_size):
            batch = [items[i] for i in order[s : s + cfg.batch_size]]
            loss = supervised_loss(parser, batch, cfg.word_dropout)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parser.parameters(), cfg.grad_clip)
            opt.step()
            if sched is not None:
                sched.step()
            tot += float(loss.detach()) * len(batch)
            n += len(batch)
        rec = {"epoch": epoch, "train/parser_loss": tot / max(n, 1), "seconds": time.time() - t0}
        if on_epoch is not None:
            on_epoch(epoch, rec)
        log.info(
            "parser epoch %d: loss %.4f%s",
            epoch,
            rec["train/parser_loss"],
            "".join(f", {k} {v:.4f}" for k, v in rec.items() if "/acc/" in k),
        )
        history.append(rec)
    parser.eval()
    return history


def train_parser_on_pairs(
    domain: Domain,
    questions: Sequence[str],
    programs: Sequence[Program],
    cfg: ParserTrainConfig | None = None,
    seed: int = 0,
    extra_questions: Sequence[str] = (),
) -> Parser:
    """A new parser trained supervised on (question, program) pairs; its vocabulary also covers
    ``extra_questions`` (e.g. the unannotated questions REINFORCE will see)."""
    cfg = cfg or ParserTrainConfig()
    examples = [ParserExample(q, 0, None, p) for q, p in zip(questions, programs)]
    torch.manual_seed(seed)
    parser = Parser(domain, Vocab.build(list(questions) + list(extra_questions)), cfg.model)
    train_supervised(parser, examples, cfg, seed)
    return parser


# --------------------------------------------------------------------------------------------- scenes
SceneSource = Callable[[Sequence[int]], SceneLogits]
"""image indices (the scenes' ``image_index``) -> their SceneLogits, batched in that order."""


class OracleScenes:
    """Scene logits from ground-truth annotations (``models/oracle.py``): a perfect, frozen perception."""

    def __init__(
        self,
        scenes: Mapping[int, Scene],
        domain: Domain,
        strength: float = 10.0,
        device: torch.device | str = "cpu",
    ) -> None:
        self.scenes, self.domain, self.strength, self.device = scenes, domain, strength, device

    def __call__(self, image_indices: Sequence[int]) -> SceneLogits:
        from ..models.oracle import oracle_scene_logits

        sl = oracle_scene_logits([self.scenes[i] for i in image_indices], self.domain, self.strength)
        return _scene_to(sl, self.device)


class ModelScenes:
    """Scene logits of a frozen NSCL model on a QADataset's images, computed once per image and cached."""

    def __init__(
        self, model: torch.nn.Module, ds: Any, device: torch.device | str = "cpu", batch_images: int = 32
    ) -> None:
        self.model, self.ds, self.device, self.batch_images = model, ds, device, batch_images
        self.cache: dict[int, SceneLogits] = {}

    @torch.no_grad()
    def __call__(self, image_indices: Sequence[int]) -> SceneLogits:
        rows = [self.ds.image_of_index[i] for i in image_indices]
        missing = sorted(set(rows) - set(self.cache))
        if missing:
            was = self.model.training
            self.model.eval()
            for s in range(0, len(missing), self.batch_images):
                chunk = np.array(missing[s : s + self.batch_images])
                images, boxes, mask = self.ds.scene_batch(chunk)
                sl = self.model.perceive(images.to(self.device), boxes.to(self.device), mask.to(self.device))
                for b, r in enumerate(chunk.tolist()):
                    self.cache[r] = _scene_slice(sl, b, int(mask[b].sum()))
            self.model.train(was)
        return _scene_to(stack_scenes([self.cache[r] for r in rows]), self.device)


def _scene_slice(sl: SceneLogits, b: int, n: int) -> SceneLogits:
    return SceneLogits(
        sl.concept[b : b + 1, :n].cpu(),
        {a: v[b : b + 1, :n].cpu() for a, v in sl.query.items()},
        sl.same[b : b + 1, :, :n, :n].cpu(),
        sl.relation[b : b + 1, :, :n, :n].cpu(),
        sl.mask[b : b + 1, :n].cpu(),
    )


def stack_scenes(parts: Sequence[SceneLogits]) -> SceneLogits:
    """Batch single-image SceneLogits, padding objects (padding is masked out by the executor)."""
    N = max(p.mask.shape[1] for p in parts)

    def pad(t: Tensor, dims: Sequence[int]) -> Tensor:
        spec: list[int] = []
        for d in reversed(range(1, t.dim())):
            spec += [0, N - t.shape[d]] if d in dims else [0, 0]
        return torch.nn.functional.pad(t, spec)

    return SceneLogits(
        torch.cat([pad(p.concept, [1]) for p in parts]),
        {a: torch.cat([pad(p.query[a], [1]) for p in parts]) for a in parts[0].query},
        torch.cat([pad(p.same, [2, 3]) for p in parts]),
        torch.cat([pad(p.relation, [2, 3]) for p in parts]),
        torch.cat([pad(p.mask, [1]) for p in parts]),
    )


def _scene_to(sl: SceneLogits, device: torch.device | str) -> SceneLogits:
    return SceneLogits(
        sl.concept.to(device),
        {a: v.to(device) for a, v in sl.query.items()},
        sl.same.to(device),
        sl.relation.to(device),
        sl.mask.to(device),
    )


# --------------------------------------------------------------------------------------------- execution
_FALLBACK = Program((Node("scene"), Node("count", (0,))))


def run_programs(
    programs: Sequence[Program | None],
    rows: Sequence[int],
    scene: SceneLogits,
    domain: Domain,
    quantize: bool,
    compiler: Compiler | None = None,
    referents: bool = False,
) -> tuple[Output, Tensor]:
    """Execute programs (``rows[i]``: the image of program i in ``scene``) on the batched executor; a None
    program (failed parse) runs as a placeholder and comes back with ``valid`` False. ``referents`` (test
    mode): also ``Output.referent_logp``."""
    compiler = compiler or Compiler(domain)
    compiled = [compiler(p if p is not None else _FALLBACK) for p in programs]
    batch = ProgramBatch.collate(compiled, list(rows)).to(scene.mask.device)
    out = Executor(domain)(batch, scene, quantize, referents)
    valid = torch.tensor([p is not None for p in programs], device=scene.mask.device)
    return out, valid


def _run_chunks(
    programs: Sequence[Program | None],
    image_indices: Sequence[int],
    scenes: SceneSource,
    domain: Domain,
    batch_size: int,
    compiler: Compiler,
) -> Iterator[tuple[list[int], Output, SceneLogits]]:
    """Test-mode execution of the non-None programs, ``batch_size`` at a time: (their indices, the output
    with ``referent_logp``, the chunk's scene logits)."""
    live = [i for i, p in enumerate(programs) if p is not None]
    for s in range(0, len(live), batch_size):
        idx = live[s : s + batch_size]
        imgs = sorted({image_indices[i] for i in idx})
        row_of = {im: r for r, im in enumerate(imgs)}
        scene = scenes(imgs)
        with torch.no_grad():
            out, _ = run_programs(
                [programs[i] for i in idx],
                [row_of[image_indices[i]] for i in idx],
                scene,
                domain,
                True,
                compiler,
                referents=True,
            )
        yield idx, out, scene


def referent_logps(
    programs: Sequence[Program | None],
    image_indices: Sequence[int],
    scenes: SceneSource,
    domain: Domain,
    batch_size: int = 256,
    compiler: Compiler | None = None,
) -> list[float]:
    """``Output.referent_logp`` of each program run in test mode on its image; -inf for None (failed
    parses)."""
    res = [-math.inf] * len(programs)
    for idx, out, _ in _run_chunks(
        programs, image_indices, scenes, domain, batch_size, compiler or Compiler(domain)
    ):
        for i, v in zip(idx, out.referent_logp.cpu().tolist()):  # type: ignore[union-attr]
            res[i] = float(v)
    return res


@dataclass
class GuidedParse:
    """Execution-guided parses: ``programs[i]`` is the most probable program (greedy, then the beam's
    candidates in order) whose references are unambiguous enough on question i's image; ``rank[i]`` is 0
    for the greedy parse, k for the beam's k-th candidate (1-based), -1 where no candidate passed and the
    greedy parse was kept."""

    programs: list[Program | None]
    errors: list[str | None]
    rank: list[int]


def _same_answer(greedy: Program | None, cand: Program) -> bool:
    """A candidate may replace the greedy parse only if it asks for the same kind of answer (final op and
    attribute): guidance fixes what a question refers to, never what it asks."""
    if greedy is None:
        return True
    a, b = greedy.nodes[-1], cand.nodes[-1]
    return a.op == b.op and a.attribute == b.attribute


def _beam_fallback(
    parser: Parser,
    questions: Sequence[str],
    retry: Sequence[int],
    beam_size: int,
    passes: Callable[[list[int], list[Program]], list[bool]],
) -> dict[int, tuple[int, Program]]:
    """For each question index in ``retry``: (1-based rank, program) of the first of the beam's
    ``beam_size`` candidates that ``passes(question indices, candidates)`` accepts; absent when none does."""
    if not retry or beam_size <= 1:
        return {}
    cands = parser.parse_candidates([questions[i] for i in retry], beam_size, beam_size)
    flat = [(i, k, p) for i, c in zip(retry, cands) for k, p in enumerate(c, start=1)]
    ok = passes([i for i, _, _ in flat], [p for _, _, p in flat])
    chosen: dict[int, tuple[int, Program]] = {}
    for (i, k, p), good in zip(flat, ok):
        if good and i not in chosen:
            chosen[i] = (k, p)
    return chosen


def guided_parse(
    parser: Parser,
    questions: Sequence[str],
    image_indices: Sequence[int],
    scenes: SceneSource,
    beam_size: int = 8,
    min_referent_p: float = 0.05,
    batch_size: int = 256,
    greedy: tuple[list[Program | None], list[str | None]] | None = None,
) -> GuidedParse:
    """Execution-guided decoding. CLEVR's engine only asks questions whose every reference ("the cube
    left of the sphere") picks exactly one object, so a parse whose references are ambiguous or empty on the
    question's own image (``Output.referent_logp`` below log ``min_referent_p``) is unlikely to be the
    question's program. The greedy parse is kept when it passes; otherwise the beam's ``beam_size`` best
    candidates that ask for the same kind of answer (final op and attribute) are tried in order. The answer
    is never consulted. ``min_referent_p`` 0 turns the check off; ``greedy``: the questions' greedy
    ``parse_many`` result, when the caller has it."""
    domain = parser.domain
    compiler = Compiler(domain)
    bar = math.log(min_referent_p) if min_referent_p > 0 else -math.inf
    programs, errors = greedy if greedy is not None else parser.parse_many(questions, 1, "error", batch_size)
    programs, errors = list(programs), list(errors)
    lp = referent_logps(programs, image_indices, scenes, domain, batch_size, compiler)
    retry = [i for i, v in enumerate(lp) if v < bar]  # unknown words get no candidates and stay errors

    def passes(idx: list[int], cands: list[Program]) -> list[bool]:
        lps = referent_logps(cands, [image_indices[i] for i in idx], scenes, domain, batch_size, compiler)
        return [v >= bar and _same_answer(programs[i], p) for i, p, v in zip(idx, cands, lps)]

    chosen = _beam_fallback(parser, questions, retry, beam_size, passes)
    failed = set(retry)
    rank = [-1 if i in failed else 0 for i in range(len(questions))]
    for i, (k, p) in chosen.items():
        rank[i], programs[i], errors[i] = k, p, None
    return GuidedParse(programs, errors, rank)


def answer_targets(answers: Sequence[str], domain: Domain, device: torch.device | str = "cpu") -> Targets:
    kinds = AnswerKinds(domain)
    kv = [kinds.of_answer(domain, a) for a in answers]
    return Targets(
        torch.tensor([k for k, _ in kv], device=device), torch.tensor([v for _, v in kv], device=device)
    )


def _image_batches(
    examples: Sequence[ParserExample], batch_size: int, rng: np.random.Generator | None
) -> list[list[int]]:
    """Example indices grouped by image into batches of about ``batch_size`` questions."""
    by_img: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        by_img[e.image_index].append(i)
    groups = list(by_img.values())
    if rng is not None:
        groups = [groups[i] for i in rng.permutation(len(groups))]
    out, cur = [], []
    for g in groups:
        cur += g
        if len(cur) >= batch_size:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------------------------- REINFORCE
@dataclass
class MovingAverage:
    momentum: float = 0.9
    value: float | None = None

    def update(self, x: float) -> float:
        self.value = x if self.value is None else self.momentum * self.value + (1 - self.momentum) * x
        return self.value


def policy_loss(
    dec_log_prob: Tensor,
    dec_entropy: Tensor,
    correct: Tensor,
    valid: Tensor,
    qa: Tensor | None,
    samples: int,
    cfg: ParserTrainConfig,
    baseline: MovingAverage,
) -> tuple[Tensor, float]:
    """REINFORCE loss over B x samples sampled programs (question-major rows) and the mean reward.

    ``answer``: reward 1 for a right answer, advantage against a moving-average baseline or, with
    ``cfg.baseline == "loo"``, the mean reward of the same question's other samples. ``release``: the
    release's variant, reward 10 - QA loss (``qa``, soft execution), weights softmax-normalised over each
    question's candidates."""
    reward = correct.float() * valid
    mean_r = float(reward.mean()) if reward.numel() else 0.0
    if cfg.reward == "answer" and cfg.baseline == "loo" and samples > 1:
        r = reward.view(-1, samples)  # (B, S)
        b = (r.sum(1, keepdim=True) - r) / (samples - 1)  # (B, S): mean of the other samples
        loss = -((r - b).flatten() * dec_log_prob * valid).mean()
    elif cfg.reward == "answer":
        b = baseline.value if baseline.value is not None else mean_r
        loss = -((reward - b) * dec_log_prob * valid).mean()
        baseline.update(mean_r)
    elif cfg.reward == "release":
        assert qa is not None
        r = (10.0 - qa.detach()).masked_fill(~valid, -1e4).view(-1, samples)  # (B, S)
        w = torch.softmax(r, dim=-1).flatten()
        loss = -(w * dec_log_prob * valid).sum() / max(1, r.shape[0])
    else:
        raise NSCLError(f"unknown parser reward {cfg.reward!r} (answer, release)")
    if cfg.entropy_weight:
        loss = loss - cfg.entropy_weight * dec_entropy.mean()
    return loss, mean_r


def rewarded(out: Output, tgt: Targets, min_referent_p: float = 0.0) -> Tensor:
    """(Q,) bool: the test-mode answer is right and, with ``min_referent_p`` > 0, the program's references
    are unambiguous with at least that probability (``Output.referent_logp``): a program that reaches the
    right yes/no through the wrong objects earns nothing."""
    _, correct, _ = qa_loss(out, tgt)
    if min_referent_p > 0 and out.referent_logp is not None:
        correct = correct & (out.referent_logp >= math.log(min_referent_p))
    return correct


def train_reinforce(
    parser: Parser,
    examples: Sequence[ParserExample],
    scenes: SceneSource,
    cfg: ParserTrainConfig,
    annotated: Sequence[ParserExample] = (),
    seed: int = 0,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """REINFORCE on the answers of ``examples`` with a frozen perception ``scenes``; each step also fits a
    batch of the ``annotated`` programs (weight ``cfg.supervised_weight``) so that the K annotations keep
    anchoring the parser."""
    domain = parser.domain
    usable = [e for e in examples if e.answer is not None]
    items, _ = build_targets(parser, annotated) if annotated and cfg.supervised_weight > 0 else ([], [])
    opt = make_optimizer(parser.parameters(), cfg.reinforce_lr, cfg.weight_decay)
    baseline = MovingAverage(cfg.baseline_momentum)
    compiler = Compiler(domain)
    rng = np.random.default_rng([seed, 19])
    history = []
    for epoch in range(1, cfg.reinforce_epochs + 1):
        parser.eval()  # no dropout: the sampled policy is the one being scored
        t0 = time.time()
        tot_r, tot_n = 0.0, 0
        for idx in _image_batches(usable, cfg.reinforce_batch_size, rng):
            batch = [usable[i] for i in idx]
            imgs = sorted({e.image_index for e in batch})
            row_of = {im: r for r, im in enumerate(imgs)}
            with torch.no_grad():
                scene = scenes(imgs)
            dec = parser.sample([e.question for e in batch], cfg.samples)
            rows = [row_of[e.image_index] for e in batch for _ in range(cfg.samples)]
            tgt = answer_targets(
                [e.answer for e in batch for _ in range(cfg.samples)],
                domain,  # type: ignore[misc]
                scene.mask.device,
            )
            with torch.no_grad():
                out, valid = run_programs(
                    dec.programs, rows, scene, domain, True, compiler, referents=cfg.min_referent_p > 0
                )
                correct = rewarded(out, tgt, cfg.min_referent_p)
                qa = None
                if cfg.reward == "release":
                    out_soft, _ = run_programs(dec.programs, rows, scene, domain, False, compiler)
                    qa, _, _ = qa_loss(out_soft, tgt)
            device = dec.log_prob.device
            loss, mean_r = policy_loss(
                dec.log_prob,
                dec.entropy,
                correct.to(device),
                valid.to(device),
                None if qa is None else qa.to(device),
                cfg.samples,
                cfg,
                baseline,
            )
            if items:
                pick = rng.choice(len(items), size=min(cfg.batch_size, len(items)), replace=False)
                parser.train()
                loss = loss + cfg.supervised_weight * supervised_loss(
                    parser, [items[i] for i in pick], cfg.word_dropout
                )
                parser.eval()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parser.parameters(), cfg.grad_clip)
            opt.step()
            tot_r += mean_r * len(batch)
            tot_n += len(batch)
        rec = {"epoch": epoch, "train/parser_reward": tot_r / max(tot_n, 1), "seconds": time.time() - t0}
        if on_epoch is not None:
            on_epoch(epoch, rec)
        log.info(
            "parser REINFORCE epoch %d: mean reward %.4f%s",
            epoch,
            rec["train/parser_reward"],
            "".join(f", {k} {v:.4f}" for k, v in rec.items() if "/acc/" in k),
        )
        history.append(rec)
    parser.eval()
    return history


# --------------------------------------------------------------------------------------------- self-training
@dataclass
class PseudoLabels:
    """Programs found for unannotated questions from their answers: ``examples`` carry the found program;
    ``greedy`` of them came from the greedy parse, ``beam`` from a beam candidate; ``missed`` questions had
    no rewarded candidate."""

    examples: list[ParserExample]
    greedy: int
    beam: int
    missed: int


def pseudo_label(
    parser: Parser,
    examples: Sequence[ParserExample],
    scenes: SceneSource,
    beam_size: int = 8,
    min_referent_p: float = 0.05,
    batch_size: int = 256,
) -> PseudoLabels:
    """Label each answered question with the parser's most probable program that earns the REINFORCE
    reward (:func:`rewarded`: the right answer, unambiguous references): the greedy parse, else the first
    such candidate of a beam of ``beam_size``. Supervised training on these labels (``parser.self_train_epochs``)
    turns the answers into sharp targets, as maximum marginal likelihood with beam search does."""
    domain = parser.domain
    compiler = Compiler(domain)
    usable = [e for e in examples if e.answer is not None]

    def reward(progs: Sequence[Program | None], exs: Sequence[ParserExample]) -> list[bool]:
        ok = [False] * len(progs)
        images = [e.image_index for e in exs]
        for idx, out, scene in _run_chunks(progs, images, scenes, domain, batch_size, compiler):
            tgt = answer_targets([exs[i].answer for i in idx], domain, scene.mask.device)  # type: ignore[misc]
            for i, g in zip(idx, rewarded(out, tgt, min_referent_p).cpu().tolist()):
                ok[i] = bool(g)
        return ok

    # image-grouped order, so each scene batch covers few images
    order = sorted(range(len(usable)), key=lambda i: usable[i].image_index)
    usable = [usable[i] for i in order]
    programs, _ = parser.parse_many([e.question for e in usable], 1, "error", batch_size)
    ok = reward(programs, usable)
    labels: dict[int, Program] = {i: p for i, (p, g) in enumerate(zip(programs, ok)) if g and p is not None}
    n_greedy = len(labels)
    retry = [i for i in range(len(usable)) if i not in labels]
    chosen = _beam_fallback(
        parser,
        [e.question for e in usable],
        retry,
        beam_size,
        lambda idx, cands: reward(cands, [usable[i] for i in idx]),
    )
    labels.update({i: p for i, (_, p) in chosen.items()})
    out = [replace(usable[i], program=p) for i, p in sorted(labels.items())]
    return PseudoLabels(out, n_greedy, len(labels) - n_greedy, len(usable) - len(labels))


# --------------------------------------------------------------------------------------------- joint
@dataclass
class JointBatch:
    """Images of a batch and their questions (``rows``: each question's image in ``images``)."""

    images: Tensor  # (B, 3, H, W)
    boxes: Tensor  # (B, N, 4)
    mask: Tensor  # (B, N)
    questions: list[str]
    rows: list[int]
    targets: Targets


def joint_step(
    model: torch.nn.Module,
    parser: Parser,
    batch: JointBatch,
    opt: torch.optim.Optimizer,
    cfg: ParserTrainConfig,
    baseline: MovingAverage,
    compiler: Compiler | None = None,
) -> dict[str, float]:
    """One combined step: QA loss through the executor on the parser's greedy programs trains perception and
    concepts; REINFORCE on sampled programs, rewarded by the current perception's quantised answers, trains
    the parser. One optimiser holds both parameter sets."""
    domain = parser.domain
    compiler = compiler or Compiler(domain)
    model.train()
    parser.eval()  # dropout off: greedy and sampled programs come from the policy being trained
    device = batch.images.device
    scene = model.perceive(batch.images, batch.boxes, batch.mask)
    enc_q, errs = parser.encode_questions(batch.questions, "error")
    with torch.no_grad():
        greedy = parser.decode(enc_q, "greedy", strict=False, errors=errs)  # its best executable program
    out, valid = run_programs(greedy.programs, batch.rows, scene, domain, False, compiler)
    loss_qa, correct_g, _ = qa_loss(out, batch.targets)
    loss_qa = (loss_qa * valid).sum() / valid.sum().clamp(min=1)
    S = cfg.samples
    dec = parser.decode(enc_q.repeat(S), "sample", errors=[e for e in errs for _ in range(S)])
    rows = [r for r in batch.rows for _ in range(S)]
    tgt = Targets(batch.targets.kind.repeat_interleave(S), batch.targets.value.repeat_interleave(S))
    detached = SceneLogits(
        scene.concept.detach(),
        {a: v.detach() for a, v in scene.query.items()},
        scene.same.detach(),
        scene.relation.detach(),
        scene.mask,
    )
    with torch.no_grad():
        out_s, valid_s = run_programs(dec.programs, rows, detached, domain, True, compiler)
        _, correct_s, _ = qa_loss(out_s, tgt)
        qa = None
        if cfg.reward == "release":
            out_soft, _ = run_programs(dec.programs, rows, detached, domain, False, compiler)
            qa, _, _ = qa_loss(out_soft, tgt)
    loss_pg, mean_r = policy_loss(
        dec.log_prob, dec.entropy, correct_s.to(device), valid_s.to(device), qa, S, cfg, baseline
    )
    loss = loss_qa + loss_pg
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for group in opt.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
    opt.step()
    return {
        "loss": float(loss_qa.detach()),
        "acc": float((correct_g & valid).float().mean()),
        "reward": mean_r,
        "n": len(batch.questions),
    }


# --------------------------------------------------------------------------------------------- evaluation
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
    min_referent_p: float = 0.05,
) -> dict[str, float]:
    """``{prefix}/acc/program_exact`` (canonical exact match, over annotated questions), and with a scene
    source ``{prefix}/acc/qa`` (ground-truth programs) and ``{prefix}/acc/qa_parsed`` (parsed programs),
    each also per question type; ``{prefix}/parse_errors`` counts questions the parser refused. With
    ``guided_beam`` > 0 and scenes, also ``{prefix}/acc/qa_guided`` (and per type): QA with execution-guided
    parses (:func:`guided_parse`), and ``{prefix}/guided_changed``, how many parses the check replaced."""
    programs, errors = parser.parse_many([e.question for e in examples], beam_size, unknown, batch_size)
    exact = QAMeter()
    for e, p in zip(examples, programs):
        if e.program is not None:
            exact.update([e.program.final_op], [p is not None and p.canonical() == e.program.canonical()])
    metrics = {k.replace("/acc/qa", "/acc/program_exact"): v for k, v in exact.metrics(prefix).items()}
    metrics[f"{prefix}/parse_errors"] = float(sum(e is not None for e in errors))
    if scenes is not None:
        gt, parsed = _qa_meters(parser, examples, programs, scenes, batch_size)
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
                (programs, errors) if beam_size <= 1 and unknown == "error" else None,
            )
            _, guided = _qa_meters(parser, examples, gp.programs, scenes, batch_size, with_gt=False)
            metrics.update(
                {k.replace("/acc/qa", "/acc/qa_guided"): v for k, v in guided.metrics(prefix).items()}
            )
            metrics[f"{prefix}/guided_changed"] = float(sum(r > 0 for r in gp.rank))
    return metrics


def _qa_meters(
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
    for idx in _image_batches(sub, batch_size, None):
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
    model: torch.nn.Module,
    questions: Sequence[Question],
    ds: Any,
    question_ids: Any,
    prefix: str,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Parser metrics for the trainer's evaluation of a checkpoint with a parser: ``{prefix}/acc/program_exact``,
    ``{prefix}/acc/qa_parsed`` (and per type) and ``{prefix}/parse_errors`` on the QADataset questions
    ``question_ids`` (``questions``: the split's questions, which ``ds.q_index`` points into). The
    ground-truth ``acc/qa`` keys are left to the trainer's own evaluation."""
    all_ex = examples_from_questions(questions, parser.domain)
    examples = [all_ex[int(ds.q_index[i])] for i in question_ids]
    d = ParserTrainConfig()
    m = evaluate_parser(
        parser,
        examples,
        prefix,
        ModelScenes(model, ds, device),
        guided_beam=d.guided_beam,
        min_referent_p=d.min_referent_p,
    )
    return {k: v for k, v in m.items() if not k.startswith(f"{prefix}/acc/qa/") and k != f"{prefix}/acc/qa"}


# --------------------------------------------------------------------------------------------- CLEVR form
def nscl_to_clevr(program: Program, domain: Domain) -> ClevrProgram:
    """The CLEVR-DSL form of an NS-CL program (the inverse of ``translate`` up to ``canonical``): filters
    become chains of ``filter_<attribute>``, object inputs get ``unique``, ``query_attribute_equal`` and the
    count comparisons get their intermediate ``query_*``/``count`` nodes."""
    nodes: list[ClevrNode] = []

    def add(fn: str, inputs: Sequence[int] = (), values: Sequence[str] = ()) -> int:
        nodes.append(ClevrNode(fn, tuple(inputs), tuple(values)))
        return len(nodes) - 1

    memo: dict[int, int] = {}

    def visit(i: int) -> int:
        if i in memo:
            return memo[i]
        n = program.nodes[i]
        ins = [visit(j) for j in n.inputs]
        op = n.op
        if op == "scene":
            r = add("scene")
        elif op == "filter":
            r = ins[0]
            for c in n.concepts:
                a = domain.attribute_of_concept(c)
                if a is None:
                    raise ProgramError(f"unknown concept {c!r}")
                r = add(f"filter_{a.name}", [r], [c])
        elif op == "relate":
            r = add("relate", [add("unique", [ins[0]])], n.concepts)
        elif op == "relate_attribute_equal":
            r = add(f"same_{n.attribute}", [add("unique", [ins[0]])])
        elif op in ("intersect", "union") or op in ("exist", "count"):
            r = add(op, ins)
        elif op == "query":
            r = add(f"query_{n.attribute}", [add("unique", [ins[0]])])
        elif op == "query_attribute_equal":
            qa = add(f"query_{n.attribute}", [add("unique", [ins[0]])])
            qb = add(f"query_{n.attribute}", [add("unique", [ins[1]])])
            r = add(f"equal_{n.attribute}", [qa, qb])
        elif op in _COUNT_COMPARE:
            ca, cb = add("count", [ins[0]]), add("count", [ins[1]])
            r = add(_COUNT_COMPARE[op], [ca, cb])
        else:
            raise ProgramError(f"no CLEVR form for NS-CL op {op!r}")
        memo[i] = r
        return r

    visit(len(program.nodes) - 1)
    return ClevrProgram(tuple(nodes))


_COUNT_COMPARE = {"count_equal": "equal_integer", "count_less": "less_than", "count_greater": "greater_than"}


def parse_questions_file(
    parser: Parser | str | Path,
    questions_json: str | Path,
    output: str | Path,
    beam_size: int = 1,
    skip_errors: bool = False,
    unknown: str = "error",
) -> dict[str, int]:
    """Write ``output``: the questions of ``questions_json`` (every field kept) with the parser's program,
    NS-CL form under ``program_nscl`` and CLEVR form under ``program`` (replacing the original one, which
    is kept under ``program_original``). A question that cannot be parsed raises ParseError naming it, or
    with ``skip_errors`` gets ``parse_error`` (and no program). Returns counts."""
    from ..io import atomic_write_json
    from ..models.parser import ParseError

    if not isinstance(parser, Parser):
        parser = load_parser(parser)
    data = read_json(questions_json)
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise DataError(f"{questions_json}: missing required key 'questions' (a list) at the top level")
    records = data["questions"]
    texts = []
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("question"), str):
            raise DataError(f"{questions_json}: question {i}: missing required key 'question'")
        texts.append(r["question"])
    programs, errors = parser.parse_many(texts, beam_size, unknown)
    out = []
    n_err = 0
    for i, (r, p, e) in enumerate(zip(records, programs, errors)):
        r = dict(r)
        if "program" in r:
            r["program_original"] = r.pop("program")
        r.pop("program_nscl", None)
        if p is None:
            if not skip_errors:
                raise ParseError(f"{questions_json}: question {i}: {e}")
            r["parse_error"] = e
            n_err += 1
        else:
            r["program_nscl"] = p.to_json()
            r["program"] = nscl_to_clevr(p, parser.domain).to_json()
        out.append(r)
    info = dict(data.get("info", {})) if isinstance(data.get("info"), dict) else {}
    info["programs"] = "parsed by nscl's semantic parser"
    atomic_write_json(output, {"info": info, "questions": out})
    return {"questions": len(records), "parsed": len(records) - n_err, "errors": n_err}


# --------------------------------------------------------------------------------------------- checkpoints
def load_parser(path: str | Path) -> Parser:
    """The parser stored in a checkpoint (an NSCL checkpoint with a ``parser`` key, or a parser-only one)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"{p}: not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not an nscl checkpoint")
    if not state.get("parser"):
        raise CheckpointError(f"{p}: checkpoint holds no parser (train one with --training-target parser)")
    return parser_from_state(state["parser"], source=str(p))


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


# --------------------------------------------------------------------------------------------- nscl train
def fit_parser_target(
    cfg: Any,
    domain: Domain,
    paths: SplitPaths,
    run_dir: str | Path,
    device: torch.device,
    extra_paths: SplitPaths | None = None,
    init: str | None = None,
    progress: bool = True,
    parser_cfg: ParserTrainConfig | None = None,
) -> Any:
    """``nscl train --training-target parser|all``.

    parser: train a parser on the split (supervised on ``cfg.parser.annotations`` stratified programs, all
    when 0; then, with annotations > 0, REINFORCE on every training answer with the frozen NSCL of ``init``,
    or oracle perception if ``cfg.parser.perception == "oracle"``). all: joint fine-tuning of the NSCL model
    and parser stored in ``init`` for ``cfg.epochs`` epochs. Validates on the dev part and the extra split;
    writes metrics.jsonl and checkpoint_last.pth (the NSCL checkpoint of ``init`` plus a ``parser`` key).
    ``parser_cfg`` overrides ``cfg.parser`` (for a TrainConfig without that field)."""
    from .checkpoint import load_checkpoint
    from .data import QADataset
    from .trainer import FitResult, RunFiles, model_from_checkpoint

    t_start = time.time()
    pcfg: ParserTrainConfig = parser_cfg or getattr(cfg, "parser", None) or ParserTrainConfig()
    target = cfg.training_target
    if target not in ("parser", "all"):
        raise NSCLError(f"fit_parser_target: training target {target!r} is not parser or all")
    run = RunFiles(Path(run_dir))
    run.root.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    handler.setLevel(logging.INFO)
    nscl_log = logging.getLogger("nscl")
    old_level = nscl_log.level
    if nscl_log.getEffectiveLevel() > logging.INFO:  # the run log always gets INFO
        nscl_log.setLevel(logging.INFO)
    nscl_log.addHandler(handler)
    try:
        torch.manual_seed(cfg.seed)
        if getattr(cfg, "threads", 0):
            torch.set_num_threads(cfg.threads)
        base = load_checkpoint(init) if init else None
        model = None
        if base is not None:
            model, _, base_domain = model_from_checkpoint(base, str(init))
            if base_domain != domain:
                raise CheckpointError(f"{init}: its domain differs from --domain")
            model.to(device)
            for p_ in model.parameters():
                p_.requires_grad_(target == "all")
        split = load_split(paths, domain)
        examples = examples_from_questions(split.questions, domain)
        train_ex, dev_ex = split_by_image(examples, list(split.scenes), cfg.data_split, cfg.seed)
        extra_split = load_split(extra_paths, domain) if extra_paths is not None else None
        extra_ex = examples_from_questions(extra_split.questions, domain) if extra_split else []
        need_images = model is not None
        ds = extra_ds = None
        if need_images:
            split.check_images()
            ds = QADataset(split, domain, cfg.image_height, progress)
            if extra_split is not None:
                extra_split.check_images()
                extra_ds = QADataset(extra_split, domain, cfg.image_height, progress)

        def scene_source(which: str) -> SceneSource | None:
            if model is not None:
                return ModelScenes(model, ds if which == "train" else extra_ds, device)
            if pcfg.perception == "oracle":
                s = split if which == "train" else extra_split
                return OracleScenes(s.scenes, domain, device=device)  # type: ignore[union-attr]
            return None

        records: list[dict] = []
        guided = {"guided_beam": pcfg.guided_beam, "min_referent_p": pcfg.min_referent_p}

        def validate(rec: dict[str, Any]) -> None:
            if dev_ex:
                rec.update(evaluate_parser(parser, dev_ex, "validation", scene_source("train"), **guided))
            if extra_ex:
                rec.update(
                    evaluate_parser(parser, extra_ex, "validationextra", scene_source("extra"), **guided)
                )

        def write(rec: dict[str, Any]) -> None:
            records.append(rec)
            with run.metrics.open("a") as f:
                f.write(json.dumps(rec) + "\n")

        if target == "parser":
            annotated = [e for e in train_ex if e.program is not None]
            if pcfg.annotations > 0:
                annotated = [annotated[i] for i in stratified_subset(annotated, pcfg.annotations, cfg.seed)]
            do_rl = pcfg.annotations > 0 and pcfg.reinforce_epochs > 0
            do_st = pcfg.annotations > 0 and pcfg.self_train_epochs > 0 and pcfg.self_train_rounds > 0
            train_scenes = scene_source("train") if do_rl or do_st else None
            if (do_rl or do_st) and train_scenes is None:
                raise NSCLError(
                    "--parser-annotations K trains the parser from answers (REINFORCE, self-training), which needs "
                    "a trained perception: give --load NSCL_CHECKPOINT (or --set parser.perception=oracle, or "
                    "--set parser.reinforce_epochs=0 --set parser.self_train_epochs=0)"
                )
            if pcfg.init == "load":
                if base is None or not base.get("parser"):
                    raise NSCLError(
                        "parser.init=load continues a parser: give --load with a checkpoint holding one"
                    )
                parser = parser_from_state(base["parser"], domain, str(init)).to(device)
            else:
                parser = Parser(domain, build_vocab(train_ex), pcfg.model).to(device)
            log.info(
                "parser: %d annotated programs of %d training questions; dev %d; extra %d",
                len(annotated),
                len(train_ex),
                len(dev_ex),
                len(extra_ex),
            )
            interval = max(1, cfg.validation_interval)

            def sup_epoch(epoch: int, rec: dict[str, Any]) -> None:
                rec["stage"] = "supervised"
                if epoch % interval == 0 and dev_ex:
                    rec.update(evaluate_parser(parser, dev_ex, "validation"))
                write(rec)

            n_sup = len(train_supervised(parser, annotated, pcfg, cfg.seed, sup_epoch))
            if do_rl:

                def rl_epoch(epoch: int, rec: dict[str, Any]) -> None:
                    rec["stage"] = "reinforce"
                    rec["epoch"] = n_sup + epoch
                    if dev_ex and (epoch % interval == 0 or epoch == pcfg.reinforce_epochs):
                        rec.update(evaluate_parser(parser, dev_ex, "validation"))
                    write(rec)

                train_reinforce(parser, train_ex, train_scenes, pcfg, annotated, cfg.seed, rl_epoch)  # type: ignore[arg-type]
            for rnd in range(1, (pcfg.self_train_rounds if do_st else 0) + 1):
                t0 = time.time()
                pl = pseudo_label(
                    parser,
                    train_ex,
                    train_scenes,  # type: ignore[arg-type]
                    max(pcfg.guided_beam, 1),
                    pcfg.min_referent_p,
                )
                log.info(
                    "parser self-training round %d: %d programs from greedy parses, %d from the beam, %d questions "
                    "without a rewarded program (%.0fs)",
                    rnd,
                    pl.greedy,
                    pl.beam,
                    pl.missed,
                    time.time() - t0,
                )
                first = records[-1]["epoch"] if records else 0

                def st_epoch(epoch: int, rec: dict[str, Any], first: int = first, rnd: int = rnd) -> None:
                    rec["stage"] = f"self-training {rnd}"
                    rec["epoch"] = first + epoch
                    if dev_ex and (epoch % interval == 0 or epoch == pcfg.self_train_epochs):
                        rec.update(evaluate_parser(parser, dev_ex, "validation"))
                    write(rec)

                st_cfg = replace(pcfg, epochs=pcfg.self_train_epochs, min_steps=0, lr=pcfg.self_train_lr)
                train_supervised(parser, pl.examples + list(annotated), st_cfg, cfg.seed + rnd, st_epoch)
            final: dict[str, Any] = {"epoch": (records[-1]["epoch"] if records else 0), "stage": "final"}
            validate(final)
            write(final)
        else:  # all
            if base is None or model is None or not base.get("parser"):
                raise NSCLError(
                    "--training-target all fine-tunes a trained model and parser: give --load with a "
                    "checkpoint holding both (train the parser with --training-target parser --load)"
                )
            parser = parser_from_state(base["parser"], domain, str(init)).to(device)
            params = [p_ for p_ in model.parameters()] + list(parser.parameters())
            opt = make_optimizer(params, cfg.lr, cfg.weight_decay)
            baseline = MovingAverage(pcfg.baseline_momentum)
            compiler = Compiler(domain)
            usable = [e for e in train_ex if e.answer is not None]
            for epoch in range(1, cfg.epochs + 1):
                t0 = time.time()
                rng = np.random.default_rng([cfg.seed, epoch])
                tot: dict[str, float] = defaultdict(float)
                for idx in _image_batches(usable, cfg.batch_size, rng):
                    jb = make_joint_batch([usable[i] for i in idx], ds, domain, device)
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
                    validate(rec)
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
                write(rec)
        metrics = {k: v for k, v in records[-1].items() if "/" in k} if records else {}
        extra_state: dict[str, Any] = {"metrics": metrics, "epoch": records[-1]["epoch"] if records else 0}
        if base is not None and target == "all":
            extra_state["model"] = model.state_dict()  # type: ignore[union-attr]
            extra_state["optimizer"] = None
            extra_state["scheduler"] = None
        if base is None:
            extra_state["config"] = asdict(cfg) if hasattr(cfg, "__dataclass_fields__") else None
        save_checkpoint(run.checkpoint(), checkpoint_with_parser(parser, base, extra_state))
        if records:
            plot_parser_curves(records, run.curves)
        return FitResult(metrics, run.checkpoint(), run, time.time() - t_start, model)  # type: ignore[arg-type]
    finally:
        nscl_log.removeHandler(handler)
        nscl_log.setLevel(old_level)
        handler.close()


def plot_parser_curves(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Training loss / reward and validation accuracies of a parser run, by epoch."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("train/parser_loss", ax1), ("train/loss", ax1), ("train/parser_reward", ax2)):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            ax.plot(*zip(*pts), label=key)
    for key in (
        "validation/acc/program_exact",
        "validation/acc/qa_parsed",
        "validation/acc/qa",
        "validationextra/acc/qa_parsed",
        "validationextra/acc/qa_guided",
    ):
        pts = [(r["epoch"], r[key]) for r in records if key in r]
        if pts:
            ax2.plot(*zip(*pts), marker="o", label=key)
    ax1.set_xlabel("epoch")
    ax1.set_yscale("log")
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1.02)
    for ax in (ax1, ax2):
        if ax.lines:
            ax.legend(fontsize=7)
    from .trainer import save_figure

    save_figure(fig, path)


def make_joint_batch(
    batch: Sequence[ParserExample], ds: Any, domain: Domain, device: torch.device | str
) -> JointBatch:
    """Images, boxes and answer targets of a batch of examples from a QADataset's decoded images."""
    imgs = sorted({e.image_index for e in batch})
    row_of = {im: r for r, im in enumerate(imgs)}
    images, boxes, mask = ds.scene_batch(np.array([ds.image_of_index[i] for i in imgs]))
    return JointBatch(
        images.to(device),
        boxes.to(device),
        mask.to(device),
        [e.question for e in batch],
        [row_of[e.image_index] for e in batch],
        answer_targets([e.answer for e in batch], domain, device),  # type: ignore[misc]
    )
