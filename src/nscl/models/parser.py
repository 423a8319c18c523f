"""Semantic parser: question -> NS-CL program (NSCL-REFERENCE section 7, "Parser").

Dimension key: B questions (times samples or beams), T question tokens (padded), E embedding size, H encoder
GRU size per direction, D = 2H decoder size, F fixed actions (one per NS-CL op, plus ``<end>`` of a filter's
concept list), A = F + T actions per step (fixed actions, then one pointer action per token), L decoder steps.

A bidirectional GRU encodes the question; an attention GRU decoder emits the program in prefix order, e.g.::

    query(color, filter(relate(filter(scene(), [red, cube]), left), [sphere]))
    ->  query  @color  filter  @sphere <end>  relate  @left  filter  @red @cube <end>  scene

Each step chooses, with one softmax over A actions, either an op (or ``<end>``) or a *pointer* to a question
token (``@word``). Arguments (object concepts, relation concepts, attribute names) are always pointers: the
pointed word is mapped to its concept or attribute by a :class:`Lexicon` built from the domain and the
generator's synonyms (``ball`` -> sphere, ``shiny`` -> metal, ``left of`` -> left, ``colour`` -> color), so a
known concept in an unseen combination or position still parses. With ``delexicalize`` (default) the encoder
sees lexicon words only through their class (``<concept:shape>``, ``<relation>``, ``<attribute:color>`` ...),
never their identity, which makes that generalisation structural.

Decoding is constrained by the :class:`~nscl.models.grammar.Grammar` (slots, type and length masks, in the
torch-free :mod:`nscl.models.grammar`), so greedy, sampled and beam decoding only produce programs that pass
:meth:`Program.validate`. Beam search runs the beams of all questions of a batch through one decoder step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import CheckpointError
from ..config import from_dict
from ..domain import P_ATTRIBUTE, P_CONCEPTS, P_RELATION, Domain
from ..language import question_tokens, unknown_word_message
from ..program import Program
from ..vocab import SPECIALS, UNK, Vocab
from .grammar import DecodeState, Grammar, Lexicon, ParseError, QuestionInfo

NEG = -1e9  # logit of a masked action (finite, so that fully masked rows stay NaN-free)


# --------------------------------------------------------------------------------------------- model
def _token_dot(v: Tensor, tokens: Tensor, group: tuple[Tensor, int] | None) -> Tensor:
    """(B, T) dot products of each row of v (Tensor[B, D]) with its question's token vectors: tokens
    (Tensor[B, T, D]), or (Tensor[G, T, D]) shared by rows laid out by ``group`` (see :meth:`Parser.step`)."""
    if group is None:
        return (v[:, None, :] * tokens).sum(-1)
    place, k = group
    G, T, D = tokens.shape
    grid = v.new_zeros(G * k, D).index_copy_(0, place, v)
    return torch.bmm(grid.view(G, k, D), tokens.transpose(1, 2)).view(G * k, T)[place]


def _token_mix(w: Tensor, tokens: Tensor, group: tuple[Tensor, int] | None) -> Tensor:
    """(B, D) per-row weighted sums of token vectors with weights w (Tensor[B, T]); layout as in
    :func:`_token_dot`."""
    if group is None:
        return (w[:, :, None] * tokens).sum(1)
    place, k = group
    G, T, D = tokens.shape
    grid = w.new_zeros(G * k, T).index_copy_(0, place, w)
    return torch.bmm(grid.view(G, k, T), tokens).view(G * k, D)[place]


@dataclass(frozen=True)
class ParserConfig:
    embedding_dim: int = 32  # E
    hidden_dim: int = 64  # H per direction; the decoder has D = 2H
    dropout: float = 0.1
    max_length: int = 64  # decoder steps (actions) per program
    delexicalize: bool = True  # the encoder sees lexicon words only through their class


@dataclass
class EncodedQuestions:
    """A padded batch of questions: encoder input ids (Tensor[B, T]), lengths (Tensor[B]), and per question
    its :class:`QuestionInfo`."""

    ids: Tensor
    lengths: Tensor
    info: list[QuestionInfo]

    def repeat(self, n: int) -> EncodedQuestions:
        if n == 1:
            return self
        return EncodedQuestions(
            self.ids.repeat_interleave(n, 0),
            self.lengths.repeat_interleave(n, 0),
            [q for q in self.info for _ in range(n)],
        )


@dataclass
class Decoded:
    """Decoder output for B sequences: programs (None where parsing failed, with the reason in ``errors``),
    their summed log-probabilities (Tensor[B], differentiable when sampled with grad) and entropies."""

    programs: list[Program | None]
    log_prob: Tensor
    entropy: Tensor
    errors: list[str | None]
    actions: list[list[int]]


class Parser(nn.Module):
    """Bidirectional GRU encoder + attention GRU decoder with a pointer over question tokens."""

    def __init__(
        self, domain: Domain, vocab: Vocab, cfg: ParserConfig | None = None, lexicon: Lexicon | None = None
    ) -> None:
        super().__init__()
        self.domain = domain
        self.vocab = vocab
        self.cfg = cfg = cfg or ParserConfig()
        self.lexicon = lexicon or Lexicon.build(domain)
        self.grammar = g = Grammar(domain)
        self.word_classes = self.lexicon.classes(domain)
        self.class_names = tuple(sorted(set(self.word_classes.values())))
        class_id = {c: len(vocab) + i for i, c in enumerate(self.class_names)}
        self._class_id = {w: class_id[c] for w, c in self.word_classes.items()}
        E, H = cfg.embedding_dim, cfg.hidden_dim
        D = 2 * H
        self.embed = nn.Embedding(len(vocab) + len(self.class_names), E, padding_idx=0)
        self.encoder = nn.GRU(E, H, batch_first=True, bidirectional=True)
        self.init = nn.Linear(D, D)
        self.action_embed = nn.Embedding(g.num_fixed + 1, E)  # ops, <end>, <start>
        self.pointer_embed = nn.Linear(D, E)  # feedback of a pointer action: the pointed token's encoding
        self.slot_embed = nn.Embedding(len(g.slots), E)
        self.cell = nn.GRUCell(2 * E + D, D)
        self.att_query = nn.Linear(D, D)
        self.out = nn.Linear(2 * D, D)
        self.op_head = nn.Linear(D, g.num_fixed)
        self.ptr_query = nn.Linear(D, D)
        self.ptr_key = nn.Linear(D, D)
        # Coverage: tokens already pointed at get these key offsets (attention, pointer), so the decoder can
        # tell the phrase it has read from the one it has not.
        self.cov_att = nn.Parameter(torch.zeros(D))
        self.cov_ptr = nn.Parameter(torch.zeros(D))
        self.drop = nn.Dropout(cfg.dropout)
        # what the parser can read: its vocabulary and the lexicon (suggestions for unknown words come from here)
        self.known_words = frozenset(vocab.words[len(SPECIALS) :]) | self.lexicon.words

    # ------------------------------------------------------------------------------------ inputs
    def encode_questions(
        self,
        questions: Sequence[str | Sequence[str]],
        unknown: str = "error",
    ) -> tuple[EncodedQuestions, list[str | None]]:
        """Normalise and tokenise (:func:`nscl.language.question_tokens`) and map to encoder ids.
        ``unknown="error"`` reports a question with a word outside the vocabulary and the lexicon, with the
        closest known words (its entry in the returned errors is set and its ids are all UNK);
        ``unknown="unk"`` reads such words as ``<UNK>``."""
        rows: list[list[int]] = []
        infos: list[QuestionInfo] = []
        errors: list[str | None] = []
        for q in questions:
            tokens = question_tokens(q) if isinstance(q, str) else list(q)
            text = q if isinstance(q, str) else " ".join(q)
            err = None
            if not tokens:
                err = f"cannot parse {text!r}: the question is empty"
                tokens = [UNK]
            ids = []
            for w in tokens:
                if self.cfg.delexicalize and w in self._class_id:
                    ids.append(self._class_id[w])
                elif w in self.vocab:
                    ids.append(self.vocab.index[w])
                elif w in self._class_id:
                    ids.append(self.vocab.index[UNK])
                else:
                    if unknown == "error" and err is None:
                        err = unknown_word_message(text, w, self.known_words)
                    ids.append(self.vocab.index[UNK])
            rows.append(ids)
            infos.append(self.grammar.question_info(tokens, self.lexicon, text))
            errors.append(err)
        T = max(len(r) for r in rows) if rows else 1
        ids_t = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            ids_t[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        return EncodedQuestions(ids_t, lengths, infos), errors

    # ------------------------------------------------------------------------------------ network
    def encode(self, ids: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """ids (Tensor[B, T]), lengths (Tensor[B]) -> token encodings (Tensor[B, T, D]), pad mask
        (Tensor[B, T], True at real tokens) and the initial decoder state (Tensor[B, D])."""
        x = self.drop(self.embed(ids))  # (B, T, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h = self.encoder(packed)  # h: (2, B, H)
        enc, _ = nn.utils.rnn.pad_packed_sequence(
            out, batch_first=True, total_length=ids.shape[1]
        )  # (B, T, D)
        mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths.to(ids.device)[:, None]
        h0 = torch.tanh(self.init(torch.cat([h[0], h[1]], dim=-1)))  # (B, D)
        return enc, mask, h0

    def step(
        self,
        h: Tensor,
        ctx: Tensor,
        prev: Tensor,
        slot: Tensor,
        enc: Tensor,
        keys: Tensor,
        pad: Tensor,
        covered: Tensor | None = None,
        group: tuple[Tensor, int] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step. h, ctx (Tensor[B, D]); prev (Tensor[B, E]) feedback of the last action; slot
        (Tensor[B]); enc, keys (Tensor[B, T, D]); pad (Tensor[B, T]); covered (Tensor[B, T]) 1 at tokens
        already pointed at. Returns the new h, ctx and the action logits (Tensor[B, F + T]).

        ``group=(place, k)`` (beam search): enc and keys are (Tensor[G, T, D]), one per question, shared by
        its rows; row b reads question ``place[b] // k`` (place: Tensor[B], distinct cells of a G x k grid)."""
        D = h.shape[-1]
        x = torch.cat([prev, self.slot_embed(slot), ctx], dim=-1)  # (B, 2E + D)
        h = self.cell(self.drop(x), h)
        q = self.att_query(h)  # (B, D)
        att = _token_dot(q, enc, group)  # (B, T)
        if covered is not None:
            att = att + covered * (q @ self.cov_att)[:, None]
        att = torch.softmax((att / math.sqrt(D)).masked_fill(~pad, NEG), dim=-1)
        ctx = _token_mix(att, enc, group)  # (B, D)
        o = torch.tanh(self.out(self.drop(torch.cat([h, ctx], dim=-1))))  # (B, D)
        op_logits = self.op_head(o)  # (B, F)
        pq = self.ptr_query(o)  # (B, D)
        ptr_logits = _token_dot(pq, keys, group)  # (B, T)
        if covered is not None:
            ptr_logits = ptr_logits + covered * (pq @ self.cov_ptr)[:, None]
        return h, ctx, torch.cat([op_logits, ptr_logits / math.sqrt(D)], dim=-1)

    def cover(self, covered: Tensor, actions: Tensor) -> Tensor:
        """covered (Tensor[B, T]) with the tokens pointed at by ``actions`` (Tensor[B]) marked."""
        F_ = self.grammar.num_fixed
        hit = F.one_hot((actions - F_).clamp(min=0), covered.shape[1] + 1)[:, : covered.shape[1]]
        return torch.maximum(covered, hit.to(covered.dtype) * (actions >= F_)[:, None])

    def feedback(self, actions: Tensor, enc: Tensor, rows: Tensor | None = None) -> Tensor:
        """Embedding (Tensor[B, E]) of the chosen actions (Tensor[B]): op embeddings, or the pointed token's
        encoding (enc: Tensor[B, T, D]; or Tensor[G, T, D] with ``rows`` (Tensor[B]) each row's question)."""
        F_ = self.grammar.num_fixed
        is_ptr = actions >= F_
        fixed = self.action_embed(actions.clamp(max=F_ - 1))
        pos = (actions - F_).clamp(min=0, max=enc.shape[1] - 1)
        if rows is None:
            rows = torch.arange(enc.shape[0], device=enc.device)
        pointed = enc[rows, pos]  # (B, D)
        return torch.where(is_ptr[:, None], self.pointer_embed(pointed), fixed)

    def _start(self, B: int, device: torch.device) -> Tensor:
        return self.action_embed(torch.full((B,), self.grammar.num_fixed, dtype=torch.long, device=device))

    # ------------------------------------------------------------------------------------ training
    def teacher_forcing_loss(
        self, ids: Tensor, lengths: Tensor, slots: Tensor, masks: Tensor, targets: Tensor, steps: Tensor
    ) -> Tensor:
        """Negative log-likelihood (Tensor[B]) of the target programs.

        slots (Tensor[B, L]); masks, targets (Tensor[B, L, F + T]); steps (Tensor[B]) program lengths. A step
        with several target pointers (the concept named twice) scores their total probability; the decoder
        is fed back the one it currently prefers."""
        enc, pad, h = self.encode(ids, lengths)
        keys = self.ptr_key(enc)
        B, L = slots.shape
        ctx = enc.new_zeros(B, enc.shape[-1])
        prev = self._start(B, ids.device)
        covered = enc.new_zeros(B, ids.shape[1])
        nll = enc.new_zeros(B)
        for t in range(L):
            active = t < steps  # (B,)
            h, ctx, logits = self.step(h, ctx, prev, slots[:, t], enc, keys, pad, covered)
            m = masks[:, t] | ~active[:, None]
            tg = targets[:, t] | (~active[:, None] & m)
            lm = logits.masked_fill(~m, NEG)
            lt = logits.masked_fill(~tg, NEG)
            nll = nll + (torch.logsumexp(lm, -1) - torch.logsumexp(lt, -1)) * active
            chosen = lt.detach().argmax(-1)
            prev = self.feedback(chosen, enc)
            covered = self.cover(covered, chosen * active)
        return nll

    # ------------------------------------------------------------------------------------ decoding
    def decode(
        self,
        enc_q: EncodedQuestions,
        mode: str = "greedy",
        strict: bool = True,
        errors: Sequence[str | None] | None = None,
    ) -> Decoded:
        """Greedy (``mode="greedy"``) or sampled (``"sample"``) decoding of a batch, constrained to
        well-typed programs. Gradients flow into ``log_prob`` unless called under ``torch.no_grad``.

        ``strict`` (default): the decoder chooses among every well-typed action, as in training; choosing an
        op whose argument the question has no word for (``query`` without an attribute word) fails the
        question with a message, instead of silently taking the next best op. Its log-probability still
        counts, so REINFORCE learns to avoid it. ``strict=False`` masks such ops out."""
        g = self.grammar
        device = self.embed.weight.device
        ids, lengths = enc_q.ids.to(device), enc_q.lengths.to(device)
        enc, pad, h = self.encode(ids, lengths)
        keys = self.ptr_key(enc)
        B, T = ids.shape
        A = g.num_fixed + T
        n_ops = len(g.ops)
        states = [g.start() for _ in range(B)]
        errs: list[str | None] = list(errors) if errors is not None else [None] * B
        for b, e in enumerate(errs):
            if e is not None:
                states[b].stack.clear()
        ctx = enc.new_zeros(B, enc.shape[-1])
        prev = self._start(B, device)
        covered = enc.new_zeros(B, T)
        log_prob = enc.new_zeros(B)
        entropy = enc.new_zeros(B)
        L = self.cfg.max_length
        for t in range(L):
            live = [b for b in range(B) if not states[b].done]
            if not live:
                break
            mask_np = np.zeros((B, A), dtype=bool)
            slot_np = np.zeros(B, dtype=np.int64)
            for b in live:
                st, q = states[b], enc_q.info[b]
                slot_np[b] = st.stack[-1][0]
                mask_np[b, : g.num_fixed + len(q)] = g.allowed(st, t, L, q, check_available=not strict)
            mask = torch.from_numpy(mask_np).to(device)
            active = mask.any(-1)
            mask[~active, 0] = True  # finished rows: a dummy action, ignored
            h, ctx, logits = self.step(
                h, ctx, prev, torch.from_numpy(slot_np).to(device), enc, keys, pad, covered
            )
            lm = logits.masked_fill(~mask, NEG)
            logp = torch.log_softmax(lm, -1)
            if mode == "sample":
                a = torch.distributions.Categorical(logits=lm).sample()
            elif mode == "greedy":
                a = lm.argmax(-1)
            else:
                raise ValueError(f"unknown decoding mode {mode!r} (greedy, sample)")
            log_prob = log_prob + logp.gather(1, a[:, None])[:, 0] * active
            p = logp.exp()
            entropy = entropy - (p * logp.masked_fill(~mask, 0.0)).sum(-1) * active
            a_cpu = a.tolist()
            for b in live:
                q = enc_q.info[b]
                if a_cpu[b] < n_ops and not q.available[a_cpu[b]]:
                    errs[b] = self._missing_argument(q, a_cpu[b])
                    states[b].actions.append(a_cpu[b])
                    states[b].stack.clear()
                else:
                    g.advance(states[b], a_cpu[b], q)
            prev = self.feedback(a, enc)
            covered = self.cover(covered, a)
        programs: list[Program | None] = []
        for b in range(B):
            if errs[b] is not None:
                programs.append(None)
            else:
                programs.append(g.to_program(states[b].actions, enc_q.info[b]))
        return Decoded(programs, log_prob, entropy, errs, [s.actions for s in states])

    def _missing_argument(self, q: QuestionInfo, action: int) -> str:
        op = self.grammar.ops[action]
        kinds = self.grammar.pointer_ops[action]
        has = {
            P_CONCEPTS: (q.concept >= 0).any(),
            P_RELATION: (q.relation >= 0).any(),
            P_ATTRIBUTE: (q.attribute >= 0).any(),
        }
        missing = next(k for k in (P_CONCEPTS, P_RELATION, P_ATTRIBUTE) if k in kinds and not has[k])
        d = self.domain
        examples = {
            P_CONCEPTS: "an object concept such as " + ", ".join(d.object_concepts[:4]),
            P_RELATION: "a relation such as " + ", ".join(d.relation_concepts),
            P_ATTRIBUTE: "an attribute such as " + ", ".join(d.attribute_names),
        }[missing]
        return (
            f"cannot parse {q.text!r}: the parse needs {op!r}, but no word of the question names {examples}"
        )

    @torch.no_grad()
    def beam_search(
        self, enc_q: EncodedQuestions, beam_size: int, skip: Sequence[bool] | None = None
    ) -> list[DecodeState | None]:
        """Best complete action sequence per question (highest total log-probability; ``failed`` when that
        is an op whose argument the question lacks), or None when skipped or nothing completes."""
        best = self.beam_candidates(enc_q, beam_size, 1, skip)
        return [c[0] if c else None for c in best]

    @torch.no_grad()
    def beam_candidates(
        self, enc_q: EncodedQuestions, beam_size: int, n_best: int, skip: Sequence[bool] | None = None
    ) -> list[list[DecodeState]]:
        """Up to ``n_best`` complete action sequences per question, best first, from a beam of
        ``beam_size`` (empty when skipped or nothing completes).

        All questions are encoded together and every decoder step runs once over the live beams of all
        questions (N <= B * beam_size rows, grouped by question, each question's rows best first); the top-k
        selection over each question's (k, A) scores is one batched ``topk``. A candidate is scored by its
        summed log-probability; one that chooses an op whose argument the question lacks finishes as
        ``failed``; live beams that can no longer beat the ``n_best``-th finished one are dropped."""
        g = self.grammar
        device = self.embed.weight.device
        L = self.cfg.max_length
        out: list[list[DecodeState]] = [[] for _ in enc_q.info]
        todo = [b for b in range(len(enc_q.info)) if skip is None or not skip[b]]
        if not todo or beam_size < 1 or n_best < 1:
            return out
        infos = [enc_q.info[b] for b in todo]
        Bq, T = len(todo), max(len(q) for q in infos)
        A = g.num_fixed + T
        index = torch.tensor(todo)
        enc, pad, h = self.encode(enc_q.ids[index, :T].to(device), enc_q.lengths[index].to(device))
        keys = self.ptr_key(enc)  # (Bq, T, D)
        beams: list[list[DecodeState]] = [[g.start()] for _ in range(Bq)]
        finished: list[list[DecodeState]] = [[] for _ in range(Bq)]
        masks_of: list[dict] = [{} for _ in range(Bq)]  # per question: allowed_key -> allowed mask
        # Per live row (N of them): its question, decoder state, context, coverage and action feedback.
        qrow = torch.arange(Bq, device=device)
        hs, ctxs = h, enc.new_zeros(Bq, enc.shape[-1])
        covs = enc.new_zeros(Bq, T)
        prev = self._start(Bq, device)
        for t in range(L):
            live = [i for i in range(Bq) if beams[i]]
            if not live:
                break
            rows_of = [beams[i] for i in live]
            # Rows sit in a (questions with live beams) x kmax grid for the attention's batched matmuls.
            kmax = max(len(bs) for bs in rows_of)
            place = torch.tensor([j * kmax + m for j, bs in enumerate(rows_of) for m in range(len(bs))])
            place = place.to(device)
            slot = torch.tensor([s.stack[-1][0] for bs in rows_of for s in bs], device=device)
            if len(live) < Bq:
                live_t = torch.tensor(live, device=device)
                enc_l, keys_l = enc[live_t], keys[live_t]
            else:
                enc_l, keys_l = enc, keys
            hs, ctxs, logits = self.step(
                hs, ctxs, prev, slot, enc_l, keys_l, pad[qrow], covs, group=(place, kmax)
            )  # logits (N, A)
            mask_np = np.zeros((len(slot), A), dtype=bool)
            r = 0
            for i, bs in zip(live, rows_of):
                q, memo = infos[i], masks_of[i]
                for s in bs:
                    key = g.allowed_key(s, t, L)
                    m = memo.get(key)
                    if m is None:
                        m = memo[key] = g.allowed(s, t, L, q, check_available=False)
                    mask_np[r, : len(m)] = m
                    r += 1
            mask = torch.from_numpy(mask_np).to(device)
            logp = torch.log_softmax(logits.masked_fill(~mask, NEG), -1).masked_fill(~mask, -math.inf)
            prior = torch.tensor([s.score for bs in rows_of for s in bs], device=device)
            scores = prior[:, None] + logp  # (N, A)
            # Each question's (k, A) scores flattened into one padded row: (len(live), kmax * A).
            grid = scores.new_full((len(live) * kmax, A), -math.inf).index_copy_(0, place, scores)
            grid = grid.view(len(live), kmax * A)
            finite = torch.isfinite(grid).sum(-1).tolist()
            top = grid.topk(min(beam_size, kmax * A), dim=-1)
            top_values, top_indices = top.values.tolist(), top.indices.tolist()
            sel: list[int] = []  # global row of each kept beam's parent
            acts: list[int] = []
            row0 = 0
            for j, (i, bs) in enumerate(zip(live, rows_of)):
                q = infos[i]
                n = min(beam_size, finite[j])
                new_beams: list[DecodeState] = []
                parents: list[int] = []
                new_acts: list[int] = []
                for sc, idx in zip(top_values[j][:n], top_indices[j][:n]):
                    k, a = divmod(idx, A)
                    st = bs[k].copy()
                    st.score = sc
                    if a < len(g.ops) and not q.available[a]:
                        # An op whose argument the question lacks: a failed parse, competing on its score.
                        st.actions.append(a)
                        st.stack.clear()
                        st.failed = True
                        finished[i].append(st)
                        continue
                    g.advance(st, a, q)
                    if st.done:
                        finished[i].append(st)
                    else:
                        new_beams.append(st)
                        parents.append(row0 + k)
                        new_acts.append(a)
                # Only the n_best best finished ones can place (a stable sort keeps the first-found on ties).
                finished[i] = sorted(finished[i], key=lambda s: -s.score)[:n_best]
                bar = finished[i][-1].score if len(finished[i]) >= n_best else -math.inf
                # Scores only decrease, so a live beam below the n-th best finished one can never place.
                keep = [m for m, s in enumerate(new_beams) if s.score > bar]
                beams[i] = [new_beams[m] for m in keep]
                sel += [parents[m] for m in keep]
                acts += [new_acts[m] for m in keep]
                row0 += len(bs)
            if sel:
                idx_t = torch.tensor(sel, device=device)
                hs, ctxs, covs, qrow = hs[idx_t], ctxs[idx_t], covs[idx_t], qrow[idx_t]
                chosen = torch.tensor(acts, device=device)
                prev = self.feedback(chosen, enc, qrow)
                covs = self.cover(covs, chosen)
        for i, b in enumerate(todo):
            out[b] = finished[i]
        return out

    # ------------------------------------------------------------------------------------ public API
    @torch.no_grad()
    def parse_many(
        self, questions: Sequence[str], beam_size: int = 1, unknown: str = "error", batch_size: int = 256
    ) -> tuple[list[Program | None], list[str | None]]:
        """Programs (None where a question cannot be parsed) and the error message of each question."""
        was = self.training
        self.eval()
        programs: list[Program | None] = []
        errors: list[str | None] = []
        try:
            for i in range(0, len(questions), batch_size):
                chunk = list(questions[i : i + batch_size])
                enc_q, errs = self.encode_questions(chunk, unknown)
                if beam_size <= 1:
                    res = self.decode(enc_q, "greedy", strict=True, errors=errs)
                    programs += res.programs
                    errors += res.errors
                    continue
                best = self.beam_search(enc_q, beam_size, skip=[e is not None for e in errs])
                for j, (e, st) in enumerate(zip(errs, best)):
                    if e is None and st is not None and st.failed:
                        e = self._missing_argument(enc_q.info[j], st.actions[-1])
                    if e is None and st is None:
                        e = f"cannot parse {chunk[j]!r}: no well-typed program fits in the length budget"
                    if e is not None:
                        programs.append(None)
                        errors.append(e)
                    else:
                        programs.append(self.grammar.to_program(st.actions, enc_q.info[j]))  # type: ignore[union-attr]
                        errors.append(None)
        finally:
            self.train(was)
        return programs, errors

    @torch.no_grad()
    def parse_candidates(
        self, questions: Sequence[str], beam_size: int, n_best: int, unknown: str = "error"
    ) -> list[list[Program]]:
        """Up to ``n_best`` well-typed programs per question from a beam of ``beam_size``, most probable
        first; candidates that fail for a missing argument are left out, and so are questions with unknown
        words unless ``unknown`` is ``"unk"`` (read them as ``<UNK>``)."""
        was = self.training
        self.eval()
        try:
            enc_q, errs = self.encode_questions(list(questions), unknown)
            cands = self.beam_candidates(enc_q, beam_size, n_best, skip=[e is not None for e in errs])
            return [
                [self.grammar.to_program(st.actions, enc_q.info[j]) for st in c if not st.failed]
                for j, c in enumerate(cands)
            ]
        finally:
            self.train(was)

    def parse(self, questions: Sequence[str], beam_size: int = 1) -> list[Program]:
        """The program of every question; raises :class:`ParseError` (an NSCLError) naming the first
        question that cannot be parsed and why (e.g. the unknown word)."""
        programs, errors = self.parse_many(questions, beam_size)
        for e in errors:
            if e is not None:
                raise ParseError(e)
        return programs  # type: ignore[return-value]

    def sample(self, questions: Sequence[str] | EncodedQuestions, samples: int = 1) -> Decoded:
        """``samples`` programs per question (question-major: rows b * samples + k) drawn from the
        constrained decoder, with differentiable log-probabilities for REINFORCE. Questions with unknown
        words come back as None (their log_prob is 0)."""
        if isinstance(questions, EncodedQuestions):
            enc_q, errs = questions, None
        else:
            enc_q, errs = self.encode_questions(list(questions), "error")
        enc_q = enc_q.repeat(samples)
        errs_rep = [e for e in errs for _ in range(samples)] if errs is not None else None
        return self.decode(enc_q, "sample", errors=errs_rep)


# --------------------------------------------------------------------------------------------- checkpoints
def parser_state(parser: Parser) -> dict:
    """Everything needed to rebuild the parser, in types ``torch.load(weights_only=True)`` accepts."""
    return {
        "config": asdict(parser.cfg),
        "vocab": list(parser.vocab.words),
        "lexicon": parser.lexicon.to_json(),
        "domain": parser.domain.to_dict(),
        "state": parser.state_dict(),
    }


def parser_from_state(state: Mapping, domain: Domain | None = None, source: str = "checkpoint") -> Parser:
    try:
        dom = domain or Domain.from_dict(state["domain"], source)
        parser = Parser(
            dom,
            Vocab(tuple(state["vocab"])),
            from_dict(ParserConfig, state["config"]),
            Lexicon.from_json(state["lexicon"]),
        )
        parser.load_state_dict(state["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{source}: invalid parser state ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None
    parser.eval()
    return parser
