"""NS-CL from images, questions and answers alone (``nscl train --training-target all`` without ``--load``): perception,
concepts and the parser learn together, and no program annotation is read anywhere (the questions file is read with
``programs=False``; a held-out ``--extra-data-dir`` may carry programs, used only to report exact match).

Each training question gets candidate programs built from its own words (:mod:`nscl.models.program_search`: typed
programs that use every concept, relation and attribute word once and give the kind of answer that the answer has).
One step perceives a batch of images, runs every candidate on the executor, and weighs each question's candidates by
their posterior, the parser's probability times the evidence (:class:`Evidence`; detached):
``p(c | q) * exp(-QA loss - wrong_answer_cost * wrong - length_prior * nodes) * P(unique references)``. The parser
descends the weighted negative log-likelihood, perception and concepts the QA loss weighted without the wrong-answer
cost: an EM step on the marginal likelihood of the answer. A long question has tens of candidates; each step learns
from its ``candidates_kept`` most probable (ranked by the evidence, then by the parser scored without gradients).

Lessons (``parser.lessons``: ``[epochs, max objects, max question words, train perception, train parser]``) select
questions by what a user has (the number of boxes, the number of words) and say which parts learn, as the paper's
curriculum does: object-level concepts on small scenes and short questions first, then longer ones, then every
question with perception fixed, then everything jointly; ``configs/full.json`` then trains perception alone under the
fixed parser, whose scores of the candidates are computed once for the lesson (:mod:`.parser_scores`; a step then
costs about a sixth), and ends with one joint epoch. The learning rate follows
``lr_schedule`` over the epochs of all lessons. Every epoch writes a checkpoint that ``--resume`` continues exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checkpoint import CheckpointError, load_checkpoint
from ..data import Split, SplitPaths, load_split
from ..domain import Domain
from ..errors import NSCLError
from ..inference.dataset import QADataset
from ..inference.evaluate import evaluate, evaluate_parser
from ..inference.examples import ParserExample, examples_from_questions, image_batches, split_by_image
from ..inference.execute import answer_targets, run_programs
from ..inference.guided import WordingCheck
from ..inference.scenes import ModelScenes
from ..losses import qa_loss
from ..models.executor import Compiler, SceneLogits
from ..models.nscl import NSCL
from ..models.parser import Parser
from ..models.parser_targets import Target, collate, program_nll, targets_of
from ..models.program_search import (
    AnswerShape,
    SearchLimits,
    abstract_actions,
    programs_from_actions,
    search_programs,
    signature,
)
from ..program import Program, program_from_str
from ..run_config import ParserTrainConfig, TrainConfig
from ..vocab import tokenize
from .curves import plot_answers_curves
from .fit_parser import checkpoint_with_parser
from .harness import FitResult, Run
from .parser_scores import ParserScores
from .parser_supervised import build_vocab, make_optimizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lesson:
    epochs: int
    max_objects: int
    max_words: int
    perception: bool  # perception and concepts learn
    parser: bool  # the parser learns
    # Questions the search found nothing for get the parser's n best parses (beam 2n) that fit; 0: none.
    proposals: int = 0

    @classmethod
    def from_row(cls, row: Sequence[int]) -> Lesson:
        if len(row) not in (5, 6):
            raise NSCLError(
                f"parser.lessons: each row is [epochs, objects, words, perception, parser(, proposals)], got {row}"
            )
        e, s, w, p, q, *k = (int(v) for v in row)
        return cls(e, s, w, bool(p), bool(q), k[0] if k else 0)

    def takes(self, n_objects: int, question: str) -> bool:
        """Whether a question with this many objects in its scene is one of the lesson's (words as tokenized)."""
        return n_objects <= self.max_objects and len(tokenize(question)) <= self.max_words

    @property
    def scores_once(self) -> bool:
        """Whether the lesson reads the fixed parser's scores from a table computed at its start
        (:class:`ParserScores`): perception learns, the parser does not, and no proposals change the candidates."""
        return self.perception and not self.parser and not self.proposals


class Candidates:
    """Each question's candidate programs. A search is kept by its signature (where the question's concept,
    relation and attribute words are, and the answer's shape), so a question phrased like one already searched
    reads its candidates off that search's action sequences."""

    def __init__(
        self,
        parser: Parser,
        limits: SearchLimits,
        slack: int,
        wording_roots: bool = False,
        anaphora: bool = True,
    ) -> None:
        self.parser, self.limits, self.slack, self.wording_roots = parser, limits, slack, wording_roots
        self.anaphora = anaphora
        self.searches: dict[tuple, list[tuple[int, ...]]] = {}
        self.programs: dict[tuple[str, str | None], list[Program]] = {}  # (question, answer) -> candidates
        self.memory: dict[int, dict[Program, None]] = {}  # question index -> proposals that answered right
        self.fits = WordingCheck(parser.lexicon)

    @classmethod
    def from_config(cls, parser: Parser, pcfg: ParserTrainConfig) -> Candidates:
        """The search as ``parser.search_expansions``, ``search_slack``, ``wording_roots`` and
        ``search_anaphora`` set it."""
        limits = SearchLimits(max_expansions=pcfg.search_expansions)
        return cls(parser, limits, pcfg.search_slack, pcfg.wording_roots, pcfg.search_anaphora)

    def with_proposals(self, batch: Sequence[ParserExample], n_best: int) -> list[list[Program]]:
        """Each question's searched candidates; where there are none, the programs that answered it right before
        (off-policy memory) and the parser's ``n_best`` parses that give the answer's kind and fit the wording."""
        out = [self(e) for e in batch]
        if n_best <= 0:
            return out
        need = [i for i, c in enumerate(out) if not c]
        if need:
            props = self.parser.parse_candidates([batch[i].question for i in need], 2 * n_best, n_best, "unk")
            for i, ps in zip(need, props):
                e = batch[i]
                shape = AnswerShape.of(self.parser.domain, e.answer)
                ok = [p for p in ps if self.fits(e.question, p) and shape.admits(p, self.parser.domain)]
                mem = self.memory.get(e.index, {})
                out[i] = list(dict.fromkeys([*mem, *(p.canonical() for p in ok)]))
        return out

    def remember(self, e: ParserExample, program: Program) -> None:
        self.memory.setdefault(e.index, {})[program] = None

    def __call__(self, e: ParserExample) -> list[Program]:
        got = self.programs.get((e.question, e.answer))
        if got is None:
            got = self.programs[(e.question, e.answer)] = self._search(e)
        return got

    def _search(self, e: ParserExample) -> list[Program]:
        p = self.parser
        try:
            enc, _ = p.encode_questions([e.question], "unk")
        except NSCLError:
            return []
        q = enc.info[0]
        tokens = list(q.tokens)
        words = p.lexicon.attributes, p.lexicon.concepts
        shape = AnswerShape.of_wording(p.domain, e.answer, tokens, *words, self.wording_roots)
        key = signature(q, shape)
        actions = self.searches.get(key)
        if actions is None:
            found = search_programs(p.grammar, q, shape, self.limits, self.slack, self.anaphora).actions
            actions = self.searches[key] = [abstract_actions(p.grammar, q, a) for a in found]
        return programs_from_actions(p.grammar, q, actions)


def perceive(model: NSCL, images: Tensor, boxes: Tensor, mask: Tensor, lesson: Lesson) -> SceneLogits:
    """The batch's scenes for :func:`em_step`, with gradients (and training mode) when the lesson trains
    perception."""
    model.train(lesson.perception)
    with torch.set_grad_enabled(lesson.perception):
        return model.perceive(images, boxes, mask)


@dataclass(frozen=True)
class Evidence:
    """What besides the parser weighs a candidate, in nats (``parser.length_prior``, ``wrong_answer_cost``,
    ``referent_weight``): the answer's likelihood exp(-QA loss) always; ``length_prior`` per program node (a
    simplicity prior: of two programs the answers cannot tell apart, the shorter); ``wrong_answer_cost`` when the
    candidate's answer is wrong (the soft loss alone forgives a count that is off by one); ``referent_weight`` x
    log P(every set the program reads as one object holds exactly one), as CLEVR's engine asks only questions
    whose references are unique (a chain "left of the sphere behind the cube" read where the words mean "left of
    the sphere and behind the cube" usually needs a reference that is not). The wrong-answer cost weighs the
    parser's targets only: perception learns from the candidates with it left out (em_step)."""

    length_prior: float = 0.0
    wrong_answer_cost: float = 0.0
    referent_weight: float = 0.0
    referent_free: float = 0.0  # nats of the references' log-probability forgiven (``parser.referent_free``)

    @classmethod
    def from_config(cls, pcfg: ParserTrainConfig) -> Evidence:
        """The evidence as ``parser.length_prior``, ``wrong_answer_cost``, ``referent_weight`` and
        ``referent_free`` set it."""
        return cls(pcfg.length_prior, pcfg.wrong_answer_cost, pcfg.referent_weight, pcfg.referent_free)

    def log_weight(
        self,
        loss: Tensor,
        correct: Tensor,
        nodes: Tensor,
        referent_logp: Tensor | None,
        judge: bool = True,
    ) -> Tensor:
        """(C,) detached log-weight of each candidate apart from the parser's probability; ``judge=False``
        leaves the wrong-answer cost out (perception's weights)."""
        w = -loss.detach() - self.length_prior * nodes
        if judge:
            w = w - self.wrong_answer_cost * (~correct).to(loss.dtype)
        if self.referent_weight and referent_logp is not None:
            below = (referent_logp.to(loss.dtype) + self.referent_free).clamp(max=0.0)
            w = w + self.referent_weight * below
        return w


def em_step(
    parser: Parser,
    scene: SceneLogits,
    examples: Sequence[ParserExample],
    rows: Sequence[int],
    candidates: Sequence[Sequence[Program]],
    opt: torch.optim.Optimizer,
    lesson: Lesson,
    compiler: Compiler,
    evidence: Evidence = Evidence(),
    grad_clip: float = 5.0,
    keep: int = 0,
    scores: ParserScores | None = None,
) -> dict[str, Any]:
    """The EM step on perceived scenes (``rows``: each question's row of ``scene``; gradients reach perception
    through ``scene`` when ``lesson.perception``) for the questions that have candidates; returns loss, the share of
    questions whose most likely candidate answers right, the mean number of candidates, and the (question,
    candidate) pairs that answered right (``rewarded``). With ``keep``, only each question's ``keep`` candidates of
    highest posterior (parser scored without gradients) are learnt from and reported. ``scores``: in a lesson where
    the parser does not learn, the lesson's table of its scores of the candidates (:class:`ParserScores`), read
    instead of scoring them again."""
    domain = parser.domain
    flat = [c for cands in candidates for c in cands]
    q_of = [i for i, cands in enumerate(candidates) for _ in cands]
    if not flat:
        return {"loss": 0.0, "acc": 0.0, "n": 0, "candidates": 0.0, "rewarded": []}
    n_cands, n_q = len(flat), len(set(q_of))
    parser.train(lesson.parser)
    referents = evidence.referent_weight > 0
    out, _ = run_programs(flat, [rows[i] for i in q_of], scene, domain, False, compiler, referents)
    tgt = answer_targets([examples[i].answer for i in q_of], domain, scene.mask.device)  # type: ignore[misc]
    loss_c, correct_c, _ = qa_loss(out, tgt)  # (C,)
    # Posterior: the parser's probability x the evidence (answer, simplicity, references; see Evidence).
    nodes = torch.tensor([float(len(c)) for c in flat], device=loss_c.device)
    evid = evidence.log_weight(loss_c, correct_c, nodes, out.referent_logp)  # (C,)
    evid_seen = evidence.log_weight(loss_c, correct_c, nodes, out.referent_logp, judge=False)  # (C,)
    if scores is not None and not lesson.parser:  # a fixed parser's scores, read from the lesson's table
        nll_all = [scores(examples[q_of[c]].question, flat[c]) for c in range(n_cands)]
        chosen = [c for c in range(n_cands) if math.isfinite(nll_all[c])]
        nll_c = torch.tensor([nll_all[c] for c in chosen], dtype=loss_c.dtype, device=loss_c.device)
    else:
        chosen, nll_c = _parser_nll(parser, examples, q_of, flat, evid.tolist(), lesson, keep)
    if not chosen:
        return {"loss": 0.0, "acc": 0.0, "n": 0, "candidates": 0.0, "rewarded": []}
    flat, q_of = [flat[c] for c in chosen], [q_of[c] for c in chosen]
    idx = torch.tensor(chosen, device=loss_c.device)
    loss_c, correct_c, evid, evid_seen = loss_c[idx], correct_c[idx], evid[idx], evid_seen[idx]
    nll_c = nll_c.to(loss_c.device)
    q = torch.tensor(q_of, device=loss_c.device)
    Q = len(examples)
    # The parser's weights judge each answer right or wrong (Evidence.wrong_answer_cost); perception's forgive a
    # wrong one: a program perception still answers wrong is exactly what perception must learn from.
    w_parser = _posterior(q, Q, (-nll_c).detach() + evid)
    w_seen = _posterior(q, Q, (-nll_c).detach() + evid_seen)
    n_q = len(set(q_of))
    loss = loss_c.new_zeros(())
    if lesson.perception:
        loss = loss + (w_seen * loss_c).sum() / n_q
    if lesson.parser:
        loss = loss + (w_parser * nll_c).sum() / n_q
    if loss.requires_grad:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], grad_clip)
        opt.step()
    # Train accuracy: the parser's most likely candidate answers right.
    ps = -nll_c.detach()
    top_p = torch.full((Q,), -torch.inf, device=ps.device).scatter_reduce(0, q, ps, "amax")
    hit = ((ps >= top_p[q]) & correct_c).float()
    right = torch.zeros(Q, device=ps.device).scatter_reduce(0, q, hit, "amax")
    return {
        "loss": float(loss.detach()),
        "acc": float(right.sum()) / n_q,
        "n": n_q,
        "candidates": n_cands / n_q,
        "rewarded": [(q_of[c], flat[c]) for c in torch.nonzero(correct_c).flatten().tolist()],
    }


def _parser_nll(
    parser: Parser,
    examples: Sequence[ParserExample],
    q_of: Sequence[int],
    flat: Sequence[Program],
    prior: Sequence[float],
    lesson: Lesson,
    keep: int,
) -> tuple[list[int], Tensor]:
    """The candidates (indices into ``flat``) that the EM step learns from and the parser's negative
    log-likelihood of each (with gradients when ``lesson.parser``). With ``keep``, each question's ``keep`` of
    highest posterior: first ``3 * keep`` by the evidence (``prior``), then by the parser scored without
    gradients. A candidate the parser cannot express is left out."""
    n_q = len(set(q_of))
    sel = list(range(len(flat)))
    if keep > 0 and lesson.parser and len(flat) > keep * n_q:
        sel = _top_per_question(q_of, prior, 3 * keep)  # the answer and the prior first: no parser needed
    # Teacher-forcing targets, each question encoded once.
    items: list[Target] = []
    chosen: list[int] = []
    by_q: dict[int, list[int]] = {}
    for c in sel:
        by_q.setdefault(q_of[c], []).append(c)
    for i, cs in by_q.items():
        for c, item in zip(cs, targets_of(parser, examples[i].question, [flat[c] for c in cs])):
            if item is not None:
                items.append(item)
                chosen.append(c)
    if not chosen:
        return [], torch.zeros(0)
    if keep > 0 and lesson.parser and len(chosen) > keep * len(by_q):
        with torch.no_grad():
            nll_all = program_nll(parser, collate(items, parser.grammar.num_fixed)).tolist()
        best = _top_per_question(
            [q_of[c] for c in chosen], [prior[c] - x for c, x in zip(chosen, nll_all)], keep
        )
        chosen, items = [chosen[k] for k in best], [items[k] for k in best]
    with torch.set_grad_enabled(lesson.parser):
        nll = program_nll(parser, collate(items, parser.grammar.num_fixed))  # (C,)
    return chosen, nll


def _posterior(q: Tensor, n: int, score: Tensor) -> Tensor:
    """(C,) softmax of ``score`` within each question (``q``: each candidate's question, of ``n``)."""
    best = torch.full((n,), -torch.inf, device=score.device).scatter_reduce(0, q, score, "amax")
    w = torch.exp(score - best[q])
    return w / torch.zeros(n, device=w.device).index_add(0, q, w)[q]


def _top_per_question(q_of: Sequence[int], score: Sequence[float], keep: int) -> list[int]:
    """Indices (into ``q_of``) of each question's ``keep`` best-scored candidates, in their original order."""
    by_q: dict[int, list[int]] = {}
    for c, qi in enumerate(q_of):
        by_q.setdefault(qi, []).append(c)
    kept = [c for cs in by_q.values() for c in sorted(cs, key=lambda c: -score[c])[:keep]]
    return sorted(kept)


def fit_from_answers(
    cfg: TrainConfig,
    domain: Domain,
    paths: SplitPaths,
    run_dir: str | Path,
    device: torch.device,
    extra_paths: SplitPaths | None = None,
    progress: bool = True,
    resume: str | None = None,
) -> FitResult:
    """Train NS-CL's perception, concepts and parser from answers alone (module docstring). ``resume``: a
    checkpoint of this run to continue from exactly, at any epoch (also in the middle of a lesson)."""
    pcfg = cfg.parser
    lessons = [Lesson.from_row(r) for r in pcfg.lessons]
    if not lessons:
        raise NSCLError("learning from answers alone needs parser.lessons (see configs/full.json)")
    with Run(run_dir, cfg, plot_answers_curves) as run:
        split = load_split(paths, domain, programs=False)
        split.check_images()
        # Decoded images and boxes only: no question of this split is compiled.
        ds = QADataset(Split(split.paths, split.scenes, []), domain, cfg.image_height, progress)
        examples = [
            ParserExample(q.question, q.image_index, q.answer, None, None, q.index)
            for q in split.questions
            if q.answer is not None
        ]
        train_ex, dev_ex = split_by_image(examples, list(split.scenes), cfg.data_split, cfg.seed)
        extra_ds, extra_ex = None, []
        if extra_paths is not None:  # held-out reporting only: its programs are read for exact match
            extra_split = load_split(extra_paths, domain)
            extra_split.check_images()
            extra_ds = QADataset(extra_split, domain, cfg.image_height, progress)
            extra_ex = examples_from_questions(extra_split.questions, domain)
        n_objects = {s.image_index: len(s.objects) for s in split.scenes.values()}
        torch.manual_seed(cfg.seed)
        model = NSCL(domain, cfg.model).to(device)
        parser = Parser(domain, build_vocab(train_ex), pcfg.model).to(device)
        opt = make_optimizer(list(model.parameters()) + list(parser.parameters()), cfg.lr, cfg.weight_decay)
        cands = Candidates.from_config(parser, pcfg)
        compiler = Compiler(domain)
        evidence = Evidence.from_config(pcfg)
        epoch, done, total = 0, 0, sum(x.epochs for x in lessons)
        if resume:
            done = _resume(resume, cfg, model, parser, opt, cands)
            run.resume_records(done + 1)
            log.info("resumed from %s after epoch %d", resume, done)
        for li, lesson in enumerate(lessons, 1):
            if epoch + lesson.epochs <= done:  # a lesson finished before the resumed checkpoint
                epoch += lesson.epochs
                continue
            pool = [e for e in train_ex if lesson.takes(n_objects[e.image_index], e.question)]
            t0 = time.time()
            found = [cands(e) for e in pool]
            usable = [e for e, c in zip(pool, found) if c or lesson.proposals]
            log.info(
                "lesson %d: %d questions (<= %d objects, <= %d words), %d with candidates (search %.0fs)",
                li, len(pool), lesson.max_objects, lesson.max_words, len(usable), time.time() - t0,
            )  # fmt: skip
            scores = None
            if lesson.scores_once:
                t0 = time.time()
                scores = ParserScores.compute(parser, usable, cands)
                log.info(
                    "lesson %d: the fixed parser scored %d candidates (%.0fs)",
                    li,
                    len(scores),
                    time.time() - t0,
                )
            for k in range(lesson.epochs):
                epoch += 1
                if epoch <= done:
                    continue
                for group in opt.param_groups:
                    group["lr"] = _lr_at(cfg, epoch, total)
                t0 = time.time()
                rng = np.random.default_rng([cfg.seed, epoch])
                tot = {"loss": 0.0, "acc": 0.0, "n": 0.0, "candidates": 0.0}
                for idx in image_batches(usable, cfg.batch_size, rng):
                    batch = [usable[i] for i in idx]
                    imgs = sorted({e.image_index for e in batch})
                    row_of = {im: r for r, im in enumerate(imgs)}
                    images, boxes, mask = ds.scene_batch(np.array([ds.image_of_index[i] for i in imgs]))
                    scene = perceive(model, images.to(device), boxes.to(device), mask.to(device), lesson)
                    s = em_step(
                        parser, scene, batch, [row_of[e.image_index] for e in batch],
                        cands.with_proposals(batch, lesson.proposals), opt, lesson, compiler, evidence,
                        pcfg.grad_clip, pcfg.candidates_kept, scores,
                    )  # fmt: skip
                    if lesson.proposals:
                        for i, prog in s["rewarded"]:
                            cands.remember(batch[i], prog)
                    for key in ("loss", "acc", "candidates"):
                        tot[key] += s[key] * s["n"]
                    tot["n"] += s["n"]
                n = max(tot["n"], 1)
                rec = {
                    "epoch": epoch,
                    "stage": f"lesson {li}",
                    "lr": opt.param_groups[0]["lr"],
                    "train/loss": tot["loss"] / n,
                    "train/acc/qa_best_candidate": tot["acc"] / n,
                    "train/candidates": tot["candidates"] / n,
                    "seconds": time.time() - t0,
                }
                if epoch % cfg.validation_interval == 0 or k == lesson.epochs - 1:
                    rec.update(_validate(model, parser, ds, dev_ex, extra_ds, extra_ex, device))
                log.info(
                    "epoch %d (lesson %d): loss %.4f, best candidate right %.4f, %.1f candidates, %.1fs%s",
                    epoch, li, rec["train/loss"], rec["train/acc/qa_best_candidate"], rec["train/candidates"],
                    rec["seconds"],
                    "".join(f", {k} {v:.4f}" for k, v in rec.items() if k.endswith(("/acc/qa_parsed", "program_exact", "/acc/qa"))),
                )  # fmt: skip
                run.write(rec)
                state = _state(cfg, model, parser, opt, cands, run.records, epoch)
                run.save(state)  # every epoch: a run can resume from its last one
                if epoch % cfg.save_interval == 0:
                    run.save(state, epoch)
        metrics = _metrics(run.records)
        if epoch <= done:  # nothing left to train
            run.save(_state(cfg, model, parser, opt, cands, run.records, epoch))
        run.plot()
        return run.result(metrics, model)


def _lr_at(cfg: TrainConfig, epoch: int, total: int) -> float:
    """The learning rate of ``epoch`` (1-based) of ``total``, by ``cfg.lr_schedule`` over all lessons: "step" x 0.1
    after ``lr_decay_at`` of the epochs, or "cosine" down to lr / 100."""
    if cfg.lr_schedule == "cosine":
        t = (epoch - 1) / max(1, total - 1)
        return cfg.lr / 100 + (cfg.lr - cfg.lr / 100) * (1 + math.cos(math.pi * t)) / 2
    return cfg.lr * (0.1 if epoch > max(1, math.ceil(total * cfg.lr_decay_at)) else 1.0)


def _metrics(records: Sequence[dict[str, Any]]) -> dict[str, float]:
    return {k: v for k, v in records[-1].items() if "/" in k} if records else {}


def _state(
    cfg: TrainConfig,
    model: NSCL,
    parser: Parser,
    opt: torch.optim.Optimizer,
    cands: Candidates,
    records: Sequence[dict[str, Any]],
    epoch: int,
) -> dict[str, Any]:
    """A checkpoint that ``nscl ask``/``evaluate`` read (model, parser) and ``--resume`` continues exactly
    (optimiser, torch RNG, the off-policy memory; the searches are deterministic and redone)."""
    extra = {
        "model": model.state_dict(),
        "config": asdict(cfg),
        "metrics": _metrics(records),
        "epoch": epoch,
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "memory": {str(k): [p.to_str() for p in v] for k, v in cands.memory.items()},
    }
    return checkpoint_with_parser(parser, None, extra)


def _resume(
    path: str, cfg: TrainConfig, model: NSCL, parser: Parser, opt: torch.optim.Optimizer, cands: Candidates
) -> int:
    """Restore a run from its checkpoint at ``path``; returns the number of epochs it had done."""
    state = load_checkpoint(path, require=("model", "parser", "config", "optimizer", "epoch"))
    if state["config"] != asdict(cfg):
        raise CheckpointError(f"{path}: its config differs from this run's; resume with the same flags")
    if list(state["parser"]["vocab"]) != list(parser.vocab.words):
        raise CheckpointError(f"{path}: its parser's vocabulary differs; resume on the same data")
    model.load_state_dict(state["model"])
    parser.load_state_dict(state["parser"]["state"])
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    for k, progs in state.get("memory", {}).items():
        cands.memory[int(k)] = {program_from_str(t, parser.domain): None for t in progs}
    return int(state["epoch"])


def _validate(
    model: NSCL,
    parser: Parser,
    ds: QADataset,
    dev_ex: list[ParserExample],
    extra_ds: QADataset | None,
    extra_ex: list[ParserExample],
    device: torch.device,
) -> dict[str, float]:
    """QA with the parser's programs on the dev part; on the held-out extra split also exact match against its
    programs and, with its programs, QA and concept accuracy (reporting only)."""
    model.eval()
    parser.eval()
    rec = {}
    if dev_ex:
        rec.update(
            evaluate_parser(parser, dev_ex, "validation", ModelScenes(model, ds, device), unknown="unk")
        )
    if extra_ds is not None:
        rec.update(
            evaluate_parser(
                parser, extra_ex, "validationextra", ModelScenes(model, extra_ds, device), unknown="unk"
            )
        )
        rec.update(
            {
                k: v
                for k, v in evaluate(
                    model, extra_ds, np.arange(len(extra_ds)), device, "validationextra"
                ).items()
                if "/concept/" in k or "/relation" in k
            }
        )
    return rec
