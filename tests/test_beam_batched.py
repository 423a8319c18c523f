"""Batched beam search (``Parser.beam_candidates``) against the former per-question implementation.

The reference below is the pre-batching method body, kept verbatim as a function of the parser: it encodes
each question alone and runs one decoder step per question per time step. The batched version must return
the same candidates (actions, ``failed`` flags, order) with scores equal up to float rounding.

Imports only from ``nscl.models``, ``nscl.program``, ``nscl.data``, ``nscl.domain`` and ``nscl.vocab`` (not
``nscl.training``), with a minimal teacher-forcing loop for the trained parser.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from nscl.data import read_questions
from nscl.domain import Domain
from nscl.models.grammar import DecodeState
from nscl.models.parser import NEG, EncodedQuestions, Parser, ParserConfig
from nscl.program import Program, program_from_str, translate
from nscl.vocab import Vocab

TINY_QUESTIONS = Path(__file__).resolve().parent / "fixtures" / "tiny" / "questions.json"
CFG = ParserConfig(embedding_dim=16, hidden_dim=32, dropout=0.0, max_length=40)

# Extra annotated questions (short and long) besides the tiny fixture's eight.
PAIRS = [
    ("How many things are there?", "count(scene())"),
    ("How many red spheres are there?", "count(filter(scene(), [red, sphere]))"),
    ("Is there a cube?", "exist(filter(scene(), [cube]))"),
    (
        "What color is the sphere left of the cube?",
        "query(color, filter(relate(filter(scene(), [cube]), left), [sphere]))",
    ),
    (
        "Are there fewer red things than blue things?",
        "count_less(filter(scene(), [red]), filter(scene(), [blue]))",
    ),
    (
        "Is the sphere the same color as the cylinder?",
        "query_attribute_equal(color, filter(scene(), [sphere]), filter(scene(), [cylinder]))",
    ),
]
# Words that cannot fill some ops: no attribute word (query), no relation word (relate), no concept (filter).
NO_ARGUMENT = ["What is it?", "Is there anything?", "How many?"]


# --------------------------------------------------------------------------------------------- reference
@torch.no_grad()
def reference_beam_candidates(
    parser: Parser,
    enc_q: EncodedQuestions,
    beam_size: int,
    n_best: int,
    skip: Sequence[bool] | None = None,
) -> list[list[DecodeState]]:
    """The per-question beam search ``Parser.beam_candidates`` replaced (one decoder call per question per
    step), kept as the reference of the batched one."""
    self = parser
    g = self.grammar
    device = self.embed.weight.device
    out: list[list[DecodeState]] = []
    L = self.cfg.max_length
    for b, q in enumerate(enc_q.info):
        if skip is not None and skip[b]:
            out.append([])
            continue
        ids = enc_q.ids[b : b + 1, : len(q)].to(device)
        enc, pad, h = self.encode(ids, enc_q.lengths[b : b + 1].to(device))
        keys = self.ptr_key(enc)
        beams = [g.start()]
        hs, ctxs = h, enc.new_zeros(1, enc.shape[-1])
        covs = enc.new_zeros(1, enc.shape[1])
        prev = self._start(1, device)
        finished: list[DecodeState] = []
        for t in range(L):
            if not beams:
                break
            k = len(beams)
            slot = torch.tensor([s.stack[-1][0] for s in beams], device=device)
            hs, ctxs, logits = self.step(
                hs,
                ctxs,
                prev,
                slot,
                enc.expand(k, -1, -1),
                keys.expand(k, -1, -1),
                pad.expand(k, -1),
                covs,
            )
            mask = torch.from_numpy(
                np.stack([g.allowed(s, t, L, q, check_available=False) for s in beams])
            ).to(device)
            logp = torch.log_softmax(logits.masked_fill(~mask, NEG), -1).masked_fill(~mask, -math.inf)
            scores = torch.tensor([s.score for s in beams], device=device)[:, None] + logp  # (k, A)
            flat = scores.flatten()
            n = min(beam_size, int(torch.isfinite(flat).sum()))
            if n == 0:
                break
            top = flat.topk(n)
            new_beams, rows, acts = [], [], []
            for sc, idx in zip(top.values.tolist(), top.indices.tolist()):
                r, a = divmod(idx, logits.shape[1])
                st = beams[r].copy()
                st.score = sc
                if a < len(g.ops) and not q.available[a]:
                    # An op whose argument the question lacks: a failed parse, competing on its score.
                    st.actions.append(a)
                    st.stack.clear()
                    st.failed = True
                    finished.append(st)
                    continue
                g.advance(st, a, q)
                if st.done:
                    finished.append(st)
                else:
                    new_beams.append(st)
                    rows.append(r)
                    acts.append(a)
            done = sorted((s.score for s in finished), reverse=True)
            bar = done[n_best - 1] if len(done) >= n_best else -math.inf
            # Scores only decrease, so a live beam below the n-th best finished one can never place.
            keep = [i for i, s in enumerate(new_beams) if s.score > bar]
            beams = [new_beams[i] for i in keep]
            if beams:
                sel = torch.tensor([rows[i] for i in keep], device=device)
                hs, ctxs = hs[sel], ctxs[sel]
                chosen = torch.tensor([acts[i] for i in keep], device=device)
                prev = self.feedback(chosen, enc.expand(len(keep), -1, -1))
                covs = self.cover(covs[sel], chosen)
        out.append(sorted(finished, key=lambda s: -s.score)[:n_best])
    return out


# --------------------------------------------------------------------------------------------- parsers
def annotated(domain: Domain) -> list[tuple[str, Program]]:
    """The tiny fixture's questions with their NS-CL programs, plus :data:`PAIRS`."""
    out = [(q.question, translate(q.program, domain)) for q in read_questions(TINY_QUESTIONS, domain)]
    return out + [(q, program_from_str(p, domain)) for q, p in PAIRS]


def make_parser(domain: Domain, seed: int = 0) -> Parser:
    texts = [q for q, _ in annotated(domain)] + NO_ARGUMENT
    torch.manual_seed(seed)
    parser = Parser(domain, Vocab.build(texts), CFG)
    parser.eval()
    return parser


def teacher_forcing_steps(parser: Parser, pairs: Sequence[tuple[str, Program]], steps: int) -> None:
    """Full-batch teacher forcing (the shape of the trainer's ``supervised_loss``), ``steps`` Adam steps."""
    F_ = parser.grammar.num_fixed
    items = []
    for text, prog in pairs:
        enc, _ = parser.encode_questions([text], "unk")
        q = enc.info[0]
        slots, masks, targets = parser.grammar.target(prog, q, parser.cfg.max_length)
        items.append((enc.ids[0, : len(q)], slots, masks, targets))
    B = len(items)
    T = max(len(it[0]) for it in items)
    L = max(len(it[1]) for it in items)
    ids = torch.zeros(B, T, dtype=torch.long)
    slots_t = torch.zeros(B, L, dtype=torch.long)
    masks_t = torch.zeros(B, L, F_ + T, dtype=torch.bool)
    targets_t = torch.zeros(B, L, F_ + T, dtype=torch.bool)
    for b, (i, s, m, tg) in enumerate(items):
        t, n = len(i), len(s)
        ids[b, :t] = i
        slots_t[b, :n] = torch.from_numpy(s)
        masks_t[b, :n, : F_ + t] = torch.from_numpy(m)
        targets_t[b, :n, : F_ + t] = torch.from_numpy(tg)
    lengths = torch.tensor([len(it[0]) for it in items])
    steps_t = torch.tensor([len(it[1]) for it in items])
    opt = torch.optim.Adam(parser.parameters(), lr=1e-2)
    parser.train()
    for _ in range(steps):
        loss = parser.teacher_forcing_loss(ids, lengths, slots_t, masks_t, targets_t, steps_t).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    parser.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def untrained(domain: Domain) -> Parser:
    return make_parser(domain, seed=0)


@pytest.fixture(scope="module")
def trained(domain: Domain) -> Parser:
    parser = make_parser(domain, seed=1)
    teacher_forcing_steps(parser, annotated(domain), steps=40)
    return parser


def batch(domain: Domain) -> list[str]:
    """Questions of mixed lengths (3 to 17 tokens), with unanswerable ones in between."""
    qs = [q for q, _ in annotated(domain)]
    return [qs[0], NO_ARGUMENT[0], qs[7], qs[8], NO_ARGUMENT[2], qs[3], qs[13], NO_ARGUMENT[1], qs[1]]


def assert_same(got: list[list[DecodeState]], want: list[list[DecodeState]]) -> None:
    assert len(got) == len(want)
    for b, (g, w) in enumerate(zip(got, want)):
        assert [s.actions for s in g] == [s.actions for s in w], f"question {b}"
        assert [s.failed for s in g] == [s.failed for s in w], f"question {b}"
        assert all(s.done for s in g)
        # float32 sums: the batched GEMMs round differently from the one-question ones (observed <= 8e-6).
        np.testing.assert_allclose([s.score for s in g], [s.score for s in w], rtol=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("which", ["untrained", "trained"])
@pytest.mark.parametrize("beam_size", [1, 3, 8])
@pytest.mark.parametrize("n_best", [1, 5])
def test_batched_beam_matches_per_question_reference(
    request: pytest.FixtureRequest, domain: Domain, which: str, beam_size: int, n_best: int
) -> None:
    parser: Parser = request.getfixturevalue(which)
    questions = batch(domain)
    enc_q, errs = parser.encode_questions(questions, "error")
    assert errs == [None] * len(questions)
    skip = [False] * len(questions)
    skip[5] = True  # a long question, skipped: the padded width still comes from the others
    got = parser.beam_candidates(enc_q, beam_size, n_best, skip)
    want = reference_beam_candidates(parser, enc_q, beam_size, n_best, skip)
    assert got[5] == []
    assert_same(got, want)
    assert all(1 <= len(c) <= n_best for j, c in enumerate(got) if j != 5)


def test_failed_states_are_kept_in_order(untrained: Parser, domain: Domain) -> None:
    """Questions without an attribute / relation / concept word: ops needing one finish as ``failed`` and
    compete on their score, in the same order as the reference."""
    enc_q, _ = untrained.encode_questions(NO_ARGUMENT + batch(domain)[:2], "error")
    got = untrained.beam_candidates(enc_q, 8, 8)
    want = reference_beam_candidates(untrained, enc_q, 8, 8)
    assert_same(got, want)
    assert any(s.failed for c in got for s in c)
    for c in got:
        for s in c:
            if s.failed:
                assert s.actions[-1] < len(untrained.grammar.ops)


def test_single_question_and_all_skipped(trained: Parser, domain: Domain) -> None:
    enc_q, _ = trained.encode_questions([batch(domain)[3]], "error")
    for beam_size in (1, 3, 8):
        assert_same(
            trained.beam_candidates(enc_q, beam_size, 5),
            reference_beam_candidates(trained, enc_q, beam_size, 5),
        )
    enc_q, _ = trained.encode_questions(batch(domain)[:3], "error")
    assert trained.beam_candidates(enc_q, 8, 5, skip=[True, True, True]) == [[], [], []]


def test_trained_parser_beam_recovers_programs(trained: Parser, domain: Domain) -> None:
    """The public entry points on the batched beam: parse_many with a beam, parse_candidates."""
    pairs = annotated(domain)
    questions = [q for q, _ in pairs]
    programs, errors = trained.parse_many(questions, beam_size=4)
    assert errors == [None] * len(questions)
    exact = sum(p.canonical() == prog.canonical() for p, (_, prog) in zip(programs, pairs))
    assert exact >= len(pairs) // 2
    cands = trained.parse_candidates(questions, beam_size=4, n_best=3)
    assert [c[0] for c in cands] == programs
