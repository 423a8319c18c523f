"""The batched quasi-symbolic executor (NSCL-REFERENCE section 4): every op against values computed by hand in
both modes, padding that never leaks, agreement with the naive per-question executor, and oracle perception
answering every generated question."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nscl.losses import Targets, qa_loss
from nscl.models.concepts import ConceptConfig
from nscl.models.executor import (
    AnswerKinds,
    Compiler,
    Executor,
    ProgramBatch,
    SceneLogits,
    log_p_single,
)
from nscl.models.nscl import NSCL, ModelConfig
from nscl.models.oracle import oracle_scene_logits
from nscl.models.perception import PerceptionConfig, SceneFeatures
from nscl.models.reference_executor import run_one
from nscl.program import Node, Program, translate

pytestmark = pytest.mark.usefixtures("one_thread")

TAU = 0.25
GARBAGE = 50.0  # scene logits of padding objects: must never show in any answer
OTHER = -6.0  # logits of everything not set explicitly

# ----------------------------------------------------------------------------- a scene written by hand
# Image 0 has 3 objects, image 1 has 2 (its third slot is padding, filled with GARBAGE).
CONCEPTS = {
    "red": ([2.0, -1.0, 3.0], [1.0, -2.0]),
    "cube": ([1.0, 2.0, -3.0], [-1.0, 3.0]),
    "sphere": ([-2.0, -1.0, 4.0], [0.5, -4.0]),
}
LEFT = (
    [[-10.0, 2.0, -1.0], [1.0, -10.0, 3.0], [-2.0, 0.5, -10.0]],
    [[-10.0, 4.0], [-3.0, -10.0]],
)
SAME_COLOR = (
    [[-10.0, 1.0, -2.0], [1.0, -10.0, 3.0], [-2.0, 3.0, -10.0]],
    [[-10.0, 2.0], [2.0, -10.0]],
)
QUERY_COLOR = (
    [[1.0, 0, 0, 2.0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0, 0, 0], [0, 0, -1.0, 0, 4.0, 0, 0, 0]],
    [[0.5, 0, 0, 0, 0, 0, 0, 1.0], [0, 0, 2.0, 0, 0, 0, 0, 0]],
)
COUNTS = (3, 2)


def hand_scene(domain, images=(0, 1)) -> SceneLogits:
    """SceneLogits of the hand-written images ``images`` (padded to 3 objects with GARBAGE)."""
    B, N = len(images), 3
    C, A, R = len(domain.object_concepts), len(domain.attributes), len(domain.relation_concepts)
    concept = torch.full((B, N, C), OTHER)
    query = {a.name: torch.zeros(B, N, len(a.concepts)) for a in domain.attributes}
    same = torch.full((B, A, N, N), OTHER)
    relation = torch.full((B, R, N, N), OTHER)
    mask = torch.zeros(B, N, dtype=torch.bool)
    color = domain.attribute_names.index("color")
    left = domain.relation_concepts.index("left")
    for b, img in enumerate(images):
        n = COUNTS[img]
        mask[b, :n] = True
        for c, vals in CONCEPTS.items():
            concept[b, :n, domain.object_concepts.index(c)] = torch.tensor(vals[img])
        relation[b, left, :n, :n] = torch.tensor(LEFT[img])
        same[b, color, :n, :n] = torch.tensor(SAME_COLOR[img])
        query["color"][b, :n] = torch.tensor(QUERY_COLOR[img])
        concept[b, n:] = GARBAGE
        query_pad = [q[b] for q in query.values()]
        for q in query_pad:
            q[n:] = GARBAGE
        same[b, :, n:, :] = GARBAGE
        same[b, :, :, n:] = GARBAGE
        relation[b, :, n:, :] = GARBAGE
        relation[b, :, :, n:] = GARBAGE
        eye = torch.eye(n, dtype=torch.bool)
        same[b, :, :n, :n][:, eye] = -10.0
        relation[b, :, :n, :n][:, eye] = -10.0
    return SceneLogits(concept, query, same, relation, mask)


# ----------------------------------------------------------------------------- the same semantics on lists
def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def softmax(x: list[float]) -> list[float]:
    m = max(x)
    e = [math.exp(v - m) for v in x]
    return [v / sum(e) for v in e]


def one_hot_argmax(x: list[float]) -> list[float]:
    i = max(range(len(x)), key=lambda k: x[k])
    return [1.0 if k == i else 0.0 for k in range(len(x))]


def hand_run(prog: Program, img: int, quantize: bool):
    """NSCL-REFERENCE section 4 on plain lists of the image's real objects only."""
    n = COUNTS[img]
    uniq = one_hot_argmax if quantize else softmax

    def count(x):
        return float(sum(v > 0 for v in x)) if quantize else sum(sig(v) for v in x)

    vals: list = []
    for node in prog.nodes:
        xs = [vals[i] for i in node.inputs]
        op = node.op
        if op == "scene":
            v = [10.0] * n
        elif op == "filter":
            v = xs[0]
            for c in node.concepts:
                v = [min(a, b) for a, b in zip(v, CONCEPTS[c][img])]
        elif op == "relate":
            assert node.concepts == ("left",)
            p = uniq(xs[0])
            v = [sum(p[i] * LEFT[img][i][j] for i in range(n)) for j in range(n)]
        elif op == "relate_attribute_equal":
            assert node.attribute == "color"
            p = uniq(xs[0])
            v = [sum(p[i] * SAME_COLOR[img][i][j] for i in range(n)) for j in range(n)]
        elif op == "intersect":
            v = [min(a, b) for a, b in zip(*xs)]
        elif op == "union":
            v = [max(a, b) for a, b in zip(*xs)]
        elif op == "query":
            assert node.attribute == "color"
            p = uniq(xs[0])
            v = [sum(p[i] * QUERY_COLOR[img][i][c] for i in range(n)) for c in range(8)]
        elif op == "exist":
            v = max(xs[0])
        elif op == "count":
            v = count(xs[0])
        elif op == "query_attribute_equal":
            p, q = uniq(xs[0]), uniq(xs[1])
            v = sum(p[i] * q[j] * SAME_COLOR[img][i][j] for i in range(n) for j in range(n))
        else:
            a, b = count(xs[0]), count(xs[1])
            if quantize:
                hit = {"count_equal": a == b, "count_less": a < b, "count_greater": a > b}[op]
                v = 10.0 if hit else -10.0
            elif op == "count_equal":
                v = (2 * TAU - abs(a - b)) / (2 * TAU) / TAU
            elif op == "count_greater":
                v = (a - b - 1 + 2 * TAU) / TAU
            else:
                v = (b - a - 1 + 2 * TAU) / TAU
        vals.append(v)
    return vals[-1]


def P(*nodes: tuple) -> Program:
    """P(("scene",), ("filter", (0,), ("red",)), ...): op, inputs, concepts, attribute."""
    return Program(tuple(Node(op, *rest) for op, *rest in nodes))


def F(x: int, *concepts: str) -> tuple:
    return ("filter", (x,), concepts)


S = ("scene",)
PROGRAMS = {
    "exist(scene)": P(S, ("exist", (0,))),
    "count(scene)": P(S, ("count", (0,))),
    "count(red)": P(S, F(0, "red"), ("count", (1,))),
    "exist(red cube)": P(S, F(0, "red", "cube"), ("exist", (1,))),
    "count(union)": P(S, F(0, "red"), F(0, "cube"), ("union", (1, 2)), ("count", (3,))),
    "count(intersect)": P(S, F(0, "red"), F(0, "cube"), ("intersect", (1, 2)), ("count", (3,))),
    "exist(union)": P(S, F(0, "red"), F(0, "cube"), ("union", (1, 2)), ("exist", (3,))),
    "count(relate)": P(S, F(0, "red"), ("relate", (1,), ("left",)), ("count", (2,))),
    "exist(relate)": P(S, F(0, "red"), ("relate", (1,), ("left",)), ("exist", (2,))),
    "exist(filter(relate))": P(S, F(0, "sphere"), ("relate", (1,), ("left",)), F(2, "cube"), ("exist", (3,))),
    "count(same)": P(S, F(0, "red"), ("relate_attribute_equal", (1,), (), "color"), ("count", (2,))),
    "query(sphere)": P(S, F(0, "sphere"), ("query", (1,), (), "color")),
    "query(relate)": P(S, F(0, "red"), ("relate", (1,), ("left",)), ("query", (2,), (), "color")),
    "equal_color": P(S, F(0, "red"), F(0, "cube"), ("query_attribute_equal", (1, 2), (), "color")),
    "count_equal": P(S, F(0, "red"), F(0, "cube"), ("count_equal", (1, 2))),
    "count_less": P(S, F(0, "red"), F(0, "sphere"), ("count_less", (1, 2))),
    "count_greater": P(S, F(0, "red"), F(0, "sphere"), ("count_greater", (1, 2))),
    "count_greater(rev)": P(S, F(0, "sphere"), F(0, "red"), ("count_greater", (1, 2))),
}
# Quantised answers worked out on paper (image 0, image 1); padding (GARBAGE) would change most of them.
PAPER_QUANTIZED = {
    "exist(scene)": (10.0, 10.0),
    "count(scene)": (3.0, 2.0),
    "count(red)": (2.0, 1.0),
    "exist(red cube)": (1.0, -1.0),
    "count(union)": (3.0, 2.0),
    "count(intersect)": (1.0, 0.0),
    "exist(union)": (3.0, 3.0),
    "count(relate)": (1.0, 1.0),  # red argmax: o2 -> row [-2, .5, -10]; o0 -> row [-10, 4]
    "exist(relate)": (0.5, 4.0),
    "exist(filter(relate))": (0.5, 3.0),
    "count(same)": (1.0, 1.0),
    "equal_color": (3.0, 2.0),  # S[argmax red, argmax cube]: S0[2, 1], S1[0, 1]
    "count_equal": (10.0, 10.0),  # 2 == 2; 1 == 1
    "count_less": (-10.0, -10.0),  # 2 < 1; 1 < 1
    "count_greater": (10.0, -10.0),  # 2 > 1; 1 > 1
    "count_greater(rev)": (-10.0, -10.0),
}
PAPER_QUANTIZED_QUERY = {"query(sphere)": (QUERY_COLOR[0][2], QUERY_COLOR[1][0])}
# Soft values worked out on paper.
PAPER_SOFT = {
    "exist(scene)": (10.0, 10.0),
    "count(scene)": (3 * sig(10), 2 * sig(10)),
    "count(red)": (sig(2) + sig(-1) + sig(3), sig(1) + sig(-2)),
    "exist(red cube)": (1.0, -1.0),
    "count(intersect)": (sig(1) + sig(-1) + sig(-3), sig(-1) + sig(-2)),
    # p = softmax(red); max_j sum_i p_i LEFT[i][j] is reached at j = 1 in both images
    "exist(relate)": (
        (math.exp(2) * 2 + math.exp(-1) * -10 + math.exp(3) * 0.5)
        / (math.exp(2) + math.exp(-1) + math.exp(3)),
        (math.exp(1) * 4 + math.exp(-2) * -10) / (math.exp(1) + math.exp(-2)),
    ),
    "count_equal": (
        (0.5 - abs(sig(2) + sig(-1) + sig(3) - sig(1) - sig(2) - sig(-3))) / 0.5 / 0.25,
        (0.5 - abs(sig(1) + sig(-2) - sig(-1) - sig(3))) / 0.5 / 0.25,
    ),
}


@pytest.fixture(scope="module")
def hand_batch(domain):
    compiler = Compiler(domain)
    names, programs, images = [], [], []
    for name, prog in PROGRAMS.items():
        prog.validate(domain, name)
        for img in (0, 1):
            names.append((name, img))
            programs.append(compiler(prog))
            images.append(img)
    return names, ProgramBatch.collate(programs, images)


def answers(out, names, domain) -> dict:
    """{(program name, image): scalar value or query logit list}."""
    color = 2 + domain.attribute_names.index("color")
    res = {}
    for q, key in enumerate(names):
        res[key] = float(out.scalar[q])
    if color in out.query:
        idx, logits = out.query[color]
        for i, row in zip(idx.tolist(), logits):
            res[names[i]] = row.tolist()
    return res


@pytest.mark.parametrize("quantize", [False, True], ids=["soft", "quantized"])
def test_ops_match_hand_computation(domain, hand_batch, quantize):
    names, batch = hand_batch
    out = Executor(domain)(batch, hand_scene(domain), quantize)
    got = answers(out, names, domain)
    color = 2 + domain.attribute_names.index("color")
    for q, (name, img) in enumerate(names):
        prog = PROGRAMS[name]
        want = hand_run(prog, img, quantize)
        kind = {"count": 1, "query": color}.get(prog.final_op, 0)
        assert int(out.kind[q]) == kind, name
        if isinstance(want, list):
            assert got[name, img] == pytest.approx(want, abs=1e-5), (name, img)
        else:
            assert got[name, img] == pytest.approx(want, abs=1e-5), (name, img)
    paper = PAPER_QUANTIZED if quantize else PAPER_SOFT
    for name, pair in paper.items():
        for img, v in enumerate(pair):
            assert got[name, img] == pytest.approx(v, abs=1e-5), (name, img)
    if quantize:
        for name, pair in PAPER_QUANTIZED_QUERY.items():
            for img, v in enumerate(pair):
                assert got[name, img] == pytest.approx(v, abs=1e-6), (name, img)
        assert max(range(8), key=lambda c: got["query(sphere)", 0][c]) == 4


@pytest.mark.parametrize("quantize", [False, True], ids=["soft", "quantized"])
def test_padding_never_leaks(domain, quantize):
    """Image 1 gives the same answers alone (no padding) and beside a larger image (one padded slot)."""
    compiler = Compiler(domain)
    progs = [compiler(p) for p in PROGRAMS.values()]
    ex = Executor(domain)
    both = ex(
        ProgramBatch.collate(progs + progs, [0] * len(progs) + [1] * len(progs)), hand_scene(domain), quantize
    )
    alone_scene = hand_scene(domain, images=(1,))
    # drop the padded slot entirely
    alone_scene = SceneLogits(
        alone_scene.concept[:, :2],
        {k: v[:, :2] for k, v in alone_scene.query.items()},
        alone_scene.same[:, :, :2, :2],
        alone_scene.relation[:, :, :2, :2],
        alone_scene.mask[:, :2],
    )
    alone = ex(ProgramBatch.collate(progs, [0] * len(progs)), alone_scene, quantize)
    k = len(progs)
    torch.testing.assert_close(both.scalar[k:], alone.scalar, equal_nan=True, atol=1e-6, rtol=1e-6)
    for kind, (idx, logits) in alone.query.items():
        bidx, blogits = both.query[kind]
        sel = bidx >= k
        assert torch.equal(bidx[sel] - k, idx)
        torch.testing.assert_close(blogits[sel], logits, atol=1e-6, rtol=1e-6)


def test_quantized_answers_are_decisions(domain, hand_batch):
    """Quantised yes/no logits and counts decide the answer through qa_loss: sign and exact integer."""
    names, batch = hand_batch
    out = Executor(domain)(batch, hand_scene(domain), quantize=True)
    counts = [q for q, (n, _) in enumerate(names) if PROGRAMS[n].final_op == "count"]
    assert all(float(out.scalar[q]).is_integer() for q in counts)


def test_set_valued_program_has_no_answer(domain):
    compiler = Compiler(domain)
    progs = [compiler(P(S, F(0, "red"))), compiler(P(S, ("count", (0,))))]
    assert progs[0].output_kind == -1
    out = Executor(domain)(ProgramBatch.collate(progs, [0, 1]), hand_scene(domain))
    assert out.kind.tolist() == [-1, 1]
    assert math.isnan(float(out.scalar[0]))
    loss, correct, _ = qa_loss(out, Targets(torch.tensor([1, 1]), torch.tensor([2, 2])))
    assert float(loss[0]) == 10.0 and not bool(correct[0])


def test_soft_mode_is_differentiable(domain, hand_batch):
    names, batch = hand_batch
    scene = hand_scene(domain)
    leaves = [scene.concept, scene.same, scene.relation, scene.query["color"]]
    for t in leaves:
        t.requires_grad_(True)
    out = Executor(domain)(batch, scene)
    total = out.scalar.nan_to_num(0.0).sum() + sum(v.sum() for _, v in out.query.values())
    total.backward()
    for name, t in zip(["concept", "same", "relation", "query"], leaves):
        assert t.grad is not None and t.grad.abs().sum() > 0, name
    # Padding gets no gradient (at most softmax(-100)-sized crumbs, ~1e-44).
    pads = {
        "concept": scene.concept.grad[1, 2],
        "query": scene.query["color"].grad[1, 2],
        "same rows": scene.same.grad[1, :, 2],
        "same cols": scene.same.grad[1, :, :, 2],
        "relation rows": scene.relation.grad[1, :, 2],
        "relation cols": scene.relation.grad[1, :, :, 2],
    }
    for name, g in pads.items():
        assert g.abs().max() < 1e-30, name


# ----------------------------------------------------------------------------- batched vs per-question
def _features(mask: torch.Tensor, D: int, P_: int, seed: int) -> SceneFeatures:
    g = torch.Generator().manual_seed(seed)
    B, N = mask.shape
    objects = torch.nn.functional.normalize(torch.randn(B, N, D, generator=g), dim=-1) * mask[..., None]
    pairs = torch.randn(B, N, N, P_, generator=g)
    return SceneFeatures(objects, pairs, mask)


@pytest.mark.parametrize("quantize", [False, True], ids=["soft", "quantized"])
def test_batched_executor_matches_per_question_reference(domain, gen_dataset, gen_split, quantize):
    ds = gen_dataset
    torch.manual_seed(0)
    model = NSCL(domain, ModelConfig(PerceptionConfig(feature_dim=32, pair_dim=16), ConceptConfig())).eval()
    qids = np.nonzero(ds.q_image < 6)[0]
    assert len(qids) >= 60
    batch = ds.make_batch(qids)
    feats = _features(batch.mask, 32, 16, seed=1)
    progs = [translate(gen_split.questions[ds.q_index[i]].program, domain) for i in qids]
    local = batch.programs.image.tolist()
    with torch.no_grad():
        out = model.executor(batch.programs, model.scene_logits(feats), quantize)
        refs = [run_one(p, feats, b, model.concepts, domain, quantize) for p, b in zip(progs, local)]
    query_rows = {}
    for kind, (idx, logits) in out.query.items():
        for i, row in zip(idx.tolist(), logits):
            query_rows[i] = (kind, row)
    kinds = set()
    for q, (prog, ref) in enumerate(zip(progs, refs)):
        kinds.add(prog.final_op)
        if prog.final_op == "query":
            kind, row = query_rows[q]
            assert kind == 2 + domain.attribute_names.index(prog.nodes[-1].attribute)
            torch.testing.assert_close(row, ref, atol=1e-4, rtol=1e-4, msg=f"question {q}: {prog}")
        else:
            assert float(out.scalar[q]) == pytest.approx(float(ref), abs=1e-4), f"question {q}: {prog}"
    assert {"query", "count", "exist", "query_attribute_equal"} <= kinds


# ----------------------------------------------------------------------------- oracle perception
@pytest.mark.parametrize("quantize", [False, True], ids=["soft", "quantized"])
def test_oracle_perception_answers_every_question(domain, gen_split, quantize):
    """Scene logits from the annotations (+/-10) must reproduce all 500 stored answers."""
    scenes = sorted(gen_split.scenes.values(), key=lambda s: s.image_index)
    slot = {s.image_index: b for b, s in enumerate(scenes)}
    compiler, kinds = Compiler(domain), AnswerKinds(domain)
    programs, images, tk, tv = [], [], [], []
    for q in gen_split.questions:
        programs.append(compiler(translate(q.program, domain)))
        images.append(slot[q.image_index])
        k, v = kinds.of_answer(domain, q.answer)
        tk.append(k)
        tv.append(v)
    assert len(programs) == 500
    scene = oracle_scene_logits(scenes, domain)
    assert not scene.mask.all(), "scenes of different sizes exercise padding"
    out = Executor(domain)(ProgramBatch.collate(programs, images), scene, quantize, referents=True)
    _, correct, pred = qa_loss(out, Targets(torch.tensor(tk), torch.tensor(tv)))
    # CLEVR's engine only asks unambiguous questions: with perfect perception every reference is one object.
    # Training mode computes it too (the answers-only learner's posterior reads it), from soft sets.
    assert out.referent_logp.min() > math.log(0.99 if quantize else 0.9), out.referent_logp.min()
    wrong = [
        (
            i,
            gen_split.questions[i].question,
            gen_split.questions[i].answer,
            kinds.decode(domain, tk[i], int(pred[i])),
        )
        for i in (~correct).nonzero()[:, 0].tolist()[:5]
        if int(pred[i]) >= 0
    ]
    assert bool(correct.all()), f"{int((~correct).sum())} wrong, e.g. {wrong}"


# ----------------------------------------------------------------------------- unambiguous references
def p_exactly_one(xs: list[float]) -> float:
    """Naive: enumerate which object is the one, the rest absent."""
    return sum(sig(xs[i]) * math.prod(1 - sig(x) for j, x in enumerate(xs) if j != i) for i in range(len(xs)))


def test_log_p_single_matches_enumeration():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64) * 4
    x[0] = torch.tensor([10.0, -10, -10, -10, -10])  # one certain object: P ~ 1
    x[1] = torch.tensor([10.0, 10, -10, -10, -10])  # two: P ~ 0
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[2, 3:] = False
    mask[3, 1:] = False
    x[2, 3:] = 50.0  # padding must not count
    got = log_p_single(x, mask).exp()
    for k in range(6):
        real = [float(v) for v, m in zip(x[k], mask[k]) if m]
        assert got[k].item() == pytest.approx(p_exactly_one(real), rel=1e-9, abs=1e-12), k
    assert got[0] > 0.999 and got[1] < 1e-3


def test_referent_logp_on_hand_scene(domain, hand_batch):
    """Sum over the program's unique() inputs of log P(exactly one object), from the set logits."""
    names, batch = hand_batch
    out = Executor(domain)(batch, hand_scene(domain), quantize=True, referents=True)
    assert Executor(domain)(batch, hand_scene(domain), quantize=True).referent_logp is None  # not asked for
    got = {n: float(v) for n, v in zip(names, out.referent_logp)}
    red, cube, sphere = (CONCEPTS[c] for c in ("red", "cube", "sphere"))
    for img in (0, 1):
        assert got[("count(red)", img)] == 0.0  # no unique: nothing to check
        assert got[("query(sphere)", img)] == pytest.approx(math.log(p_exactly_one(sphere[img])), rel=1e-5)
        # two references: the red object, then the object left of it (test mode: the row of red's argmax)
        left_of_red = LEFT[img][max(range(COUNTS[img]), key=lambda i: red[img][i])]
        two = math.log(p_exactly_one(red[img])) + math.log(p_exactly_one(left_of_red))
        assert got[("query(relate)", img)] == pytest.approx(two, rel=1e-5)
        both = math.log(p_exactly_one(red[img])) + math.log(p_exactly_one(cube[img]))
        assert got[("equal_color", img)] == pytest.approx(both, rel=1e-5)


def test_scene_logits_image_cat_detach_to(domain):
    """SceneLogits.image slices one image, cat pads objects back (padding masked), detach cuts the graph."""
    from nscl.models.executor import SceneLogits

    scene = hand_scene(domain)  # B = 2 images
    n0 = int(scene.mask[0].sum())
    one = scene.image(0, n0)
    assert one.concept.shape == (1, n0, scene.concept.shape[-1]) and one.same.shape[-2:] == (n0, n0)
    assert torch.equal(one.concept[0], scene.concept[0, :n0])
    both = SceneLogits.cat([one, scene.image(1)])
    N = scene.mask.shape[1]
    assert both.concept.shape == scene.concept.shape and both.relation.shape == scene.relation.shape
    assert torch.equal(both.mask[0], torch.arange(N) < n0)  # padded objects are masked out
    assert torch.equal(both.concept[1], scene.concept[1])
    # executing on the re-assembled batch gives the answers of the original one
    progs = [Program((Node("scene"), Node("count", (0,)))), Program((Node("scene"), Node("exist", (0,))))]
    batch = ProgramBatch.collate([Compiler(domain)(p) for p in progs], [0, 1])
    a = Executor(domain)(batch, scene, quantize=True)
    b = Executor(domain)(batch, both, quantize=True)
    assert torch.equal(a.scalar, b.scalar)
    x = scene.concept.clone().requires_grad_(True)
    grad_scene = SceneLogits(x, scene.query, scene.same, scene.relation, scene.mask)
    assert grad_scene.concept.requires_grad and not grad_scene.detach().concept.requires_grad
    assert grad_scene.detach().mask is scene.mask
    assert scene.to("cpu").concept.device.type == "cpu"


def test_answer_kinds_are_the_enum(domain):
    from nscl.models.executor import AnswerKind, AnswerKinds

    kinds = AnswerKinds(domain)
    assert kinds.of_answer(domain, "yes") == (AnswerKind.BOOL, 1)
    assert kinds.of_answer(domain, "3") == (AnswerKind.INTEGER, 3)
    color = domain.attribute_names.index("color")
    red = domain.attribute("color").concepts.index("red")
    assert kinds.of_answer(domain, "red") == (AnswerKind.ATTRIBUTE + color, red)
    assert kinds.attribute_of(AnswerKind.ATTRIBUTE + color) == "color"
    for answer in ("yes", "no", "0", "7", "red", "cube", "metal", "large"):
        assert kinds.decode(domain, *kinds.of_answer(domain, answer)) == answer
    compiler = Compiler(domain)
    assert compiler(Program((Node("scene"),))).output_kind == AnswerKind.NONE
    q = Program((Node("scene"), Node("filter", (0,), ("cube",)), Node("query", (1,), (), "color")))
    assert compiler(q).output_kind == AnswerKind.ATTRIBUTE + color
