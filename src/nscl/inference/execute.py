"""Running NS-CL programs on scene logits in batches: answers, answer targets, and the reference check.

Everything here calls the batched executor (``models/executor.py``), the authoritative one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from ..domain import Domain
from ..losses import Targets
from ..models.executor import AnswerKind, AnswerKinds, Compiler, Executor, Output, ProgramBatch, SceneLogits
from ..program import Node, Program
from .scenes import SceneSource

# What a failed parse (None) runs as, so that it can share a batch; its result is marked invalid.
FALLBACK = Program((Node("scene"), Node("count", (0,))))


def answer_targets(answers: Sequence[str], domain: Domain, device: torch.device | str = "cpu") -> Targets:
    """The (kind, value) targets of normalised answer strings."""
    kinds = AnswerKinds(domain)
    kv = [kinds.of_answer(domain, a) for a in answers]
    return Targets(
        torch.tensor([k for k, _ in kv], device=device), torch.tensor([v for _, v in kv], device=device)
    )


def decode_answer(out: Output, domain: Domain, q: int = 0) -> str:
    """The answer string of question ``q`` of a test-mode output."""
    kinds = AnswerKinds(domain)
    kind = int(out.kind[q])
    if kind == AnswerKind.BOOL:
        return kinds.decode(domain, kind, int(out.scalar[q] > 0))
    if kind == AnswerKind.INTEGER:
        return kinds.decode(domain, kind, int(round(float(out.scalar[q]))))
    idx, logits = out.query[kind]
    row = int((idx == q).nonzero()[0, 0])
    return kinds.decode(domain, kind, int(logits[row].argmax()))


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
    program (failed parse) runs as a placeholder and comes back with ``valid`` (Tensor[Q] bool) False.
    ``referents``: also ``Output.referent_logp``."""
    compiler = compiler or Compiler(domain)
    compiled = [compiler(p if p is not None else FALLBACK) for p in programs]
    batch = ProgramBatch.collate(compiled, list(rows)).to(scene.mask.device)
    out = Executor(domain)(batch, scene, quantize, referents)
    valid = torch.tensor([p is not None for p in programs], device=scene.mask.device)
    return out, valid


def run_chunks(
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
    for idx, out, _ in run_chunks(
        programs, image_indices, scenes, domain, batch_size, compiler or Compiler(domain)
    ):
        for i, v in zip(idx, out.referent_logp.cpu().tolist()):  # type: ignore[union-attr]
            res[i] = float(v)
    return res
