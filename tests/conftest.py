"""Shared fixtures: the CLEVR domain, the tiny hand-made dataset, a program builder and a random-scene helper.

Helpers are handed out as session-scoped fixtures (callables) so that tests, Hypothesis tests included, can use
them without importing this module.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nscl.domain import Domain, builtin_domain
from nscl.program import ClevrProgram
from nscl.symbolic import SceneFacts

TESTS = Path(__file__).resolve().parent
TINY = TESTS / "fixtures" / "tiny"

# CLEVR's constant ground-plane directions and relation threshold (CLEVR-FACTS section 1).
RIGHT = (0.6563, 0.7545, 0.0)
BEHIND = (-0.7545, 0.6563, 0.0)
EPS = 0.2


# --------------------------------------------------------------------------------------------- domain, data
@pytest.fixture(scope="session")
def domain() -> Domain:
    return builtin_domain("clevr")


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tiny_scenes_json() -> dict:
    return json.loads((TINY / "scenes.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_facts(domain: Domain) -> dict[int, SceneFacts]:
    """SceneFacts of the two tiny scenes, by image index.

    Scene 0: 0 large red metal cube, 1 small blue rubber sphere, 2 large red rubber cylinder.
    Scene 1: 0 small gray metal sphere, 1 small gray metal cube, 2 large yellow rubber cube,
             3 small green metal cylinder.
    """
    from nscl.data import read_scenes

    return {s.image_index: SceneFacts.of(s) for s in read_scenes(TINY / "scenes.json", domain)}


@pytest.fixture
def tiny_copy(tmp_path: Path) -> Path:
    """A writable copy of the tiny dataset folder."""
    dst = tmp_path / "tiny"
    shutil.copytree(TINY, dst)
    return dst


# --------------------------------------------------------------------------------------------- programs
def build_program(expr: tuple) -> ClevrProgram:
    """A raw CLEVR program from a nested expression, e.g.
    ``("count", ("filter_color", ("scene",), "red"))``: tuples are input nodes, strings value inputs.
    Nodes are emitted in post-order, each sub-expression once per occurrence."""
    nodes: list[dict] = []

    def visit(e: tuple) -> int:
        fn, *args = e
        inputs = [visit(a) for a in args if isinstance(a, tuple)]
        values = [a for a in args if isinstance(a, str)]
        nodes.append({"function": fn, "inputs": inputs, "value_inputs": values})
        return len(nodes) - 1

    visit(expr)
    return ClevrProgram.from_json(nodes)


@pytest.fixture(scope="session")
def build() -> Callable[[tuple], ClevrProgram]:
    return build_program


# --------------------------------------------------------------------------------------------- random scenes
def relationships(coords: Sequence[Sequence[float]]) -> dict[str, list[list[int]]]:
    """CLEVR's rule: relationships[r][i] = sorted j != i with (c_j - c_i) . dir_r > eps."""
    dirs = {
        "right": RIGHT,
        "left": tuple(-v for v in RIGHT),
        "behind": BEHIND,
        "front": tuple(-v for v in BEHIND),
    }
    out: dict[str, list[list[int]]] = {}
    for r, d in dirs.items():
        rows = []
        for i, ci in enumerate(coords):
            rows.append(
                [
                    j
                    for j, cj in enumerate(coords)
                    if j != i and sum((a - b) * v for a, b, v in zip(cj, ci, d)) > EPS
                ]
            )
        out[r] = rows
    return out


def random_scene_dict(domain: Domain, rng: random.Random, n: int | None = None, image_index: int = 0) -> dict:
    """A CLEVR-format scene record with random attributes and coordinates, and relationships derived from
    the coordinates exactly as CLEVR does."""
    n = rng.randint(1, 6) if n is None else n
    objects, coords = [], []
    for _ in range(n):
        xyz = [rng.uniform(-3, 3), rng.uniform(-3, 3), 0.0]
        coords.append(xyz)
        o = {a.name: rng.choice(a.concepts) for a in domain.attributes}
        o["3d_coords"] = xyz
        objects.append(o)
    return {
        "image_index": image_index,
        "image_filename": f"RAND_{image_index:06d}.png",
        "objects": objects,
        domain.relation_field: relationships(coords),
    }


def facts_from(
    domain: Domain, attrs: Sequence[dict[str, str]], coords: Sequence[Sequence[float]]
) -> SceneFacts:
    rel = relationships(coords)
    return SceneFacts(tuple(dict(a) for a in attrs), {r: rel[r] for r in domain.relation_concepts})


@pytest.fixture(scope="session")
def random_scene() -> Callable[..., dict]:
    return random_scene_dict


@pytest.fixture(scope="session")
def make_facts() -> Callable[..., SceneFacts]:
    return facts_from


@pytest.fixture(scope="session")
def write_json() -> Callable[[Path, object], Path]:
    def _write(path: Path, obj: object) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(obj, indent=1), encoding="utf-8")
        return path

    return _write


# --------------------------------------------------------------------------------------------- generated data
GEN_TRAIN_IMAGES = 50
GEN_VAL_IMAGES = 10
GEN_HEIGHT = 48


@pytest.fixture(scope="session")
def gen_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated dataset (``<root>/train``: 50 images, 500 questions; ``<root>/val``: 10 images,
    100 questions; 64x48 pixels). Generated once per session (about 2 s); treat it as read-only."""
    from nscl.generate.pipeline import GenerateConfig, generate_dataset

    root = tmp_path_factory.mktemp("generated")
    cfg = GenerateConfig(
        out=str(root),
        seed=5,
        train_images=GEN_TRAIN_IMAGES,
        val_images=GEN_VAL_IMAGES,
        width=64,
        height=GEN_HEIGHT,
        supersample=1,
        workers=1,
    )
    generate_dataset(cfg, builtin_domain("clevr"), progress=False)
    return root


@pytest.fixture(scope="session")
def gen_split(gen_root: Path, domain: Domain):
    """The generated train split, loaded (nscl.data.Split)."""
    from nscl.data import SplitPaths, load_split

    return load_split(SplitPaths.resolve(gen_root / "train"), domain)


@pytest.fixture(scope="session")
def gen_dataset(gen_split, domain: Domain):
    """The generated train split compiled at its own resolution (QADataset, 64x48)."""
    from nscl.inference.dataset import QADataset

    return QADataset(gen_split, domain, GEN_HEIGHT)


def tiny_ask_state(
    domain: Domain, pairs: Sequence[tuple[str, str]], epochs: int, **parser_kw: object
) -> tuple:
    """(model, checkpoint state with a parser, the same state without one): a small randomly initialised NSCL
    model (48-pixel images) and a parser fitted to ``pairs`` of (question, program string)."""
    import torch

    from nscl.models.nscl import NSCL, ModelConfig
    from nscl.models.parser import ParserConfig, parser_state
    from nscl.models.perception import PerceptionConfig
    from nscl.program import program_from_str
    from nscl.run_config import ParserTrainConfig, TrainConfig
    from nscl.training.parser_supervised import train_parser_on_pairs
    from nscl.training.trainer import checkpoint_state

    torch.manual_seed(0)
    mcfg = ModelConfig(perception=PerceptionConfig(width=8, feature_dim=32, pair_dim=16))
    model = NSCL(domain, mcfg)
    pcfg = ParserTrainConfig(
        epochs=epochs,
        min_steps=0,
        batch_size=8,
        lr=1e-2,
        word_dropout=0.0,  # a tiny parser that fits its pairs exactly
        model=ParserConfig(embedding_dim=16, hidden_dim=32, dropout=0.0, max_length=40),
        **parser_kw,  # type: ignore[arg-type]
    )
    cfg = TrainConfig(image_height=GEN_HEIGHT, model=mcfg, parser=pcfg)
    parser = train_parser_on_pairs(
        domain, [q for q, _ in pairs], [program_from_str(p, domain) for _, p in pairs], pcfg
    )
    state = checkpoint_state(model, cfg, domain, None, None, 0, {}, None)
    return model, {**state, "parser": parser_state(parser)}, state


@pytest.fixture(scope="session")
def ask_state() -> Callable[..., tuple]:
    """:func:`tiny_ask_state`: a checkpoint state ``nscl ask`` and ``nscl serve`` can load."""
    return tiny_ask_state


@pytest.fixture
def one_thread():
    """Run torch on one CPU thread during the test (tiny tensors: fastest, and immune to OpenMP spin-waiting
    when other processes share the cores), then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# CLEVR-FACTS section 2: the global question_family_index range of each template file.
FAMILY_RANGES = {
    "compare_integer.json": range(0, 9),
    "comparison.json": range(9, 25),
    "three_hop.json": range(25, 31),
    "single_and.json": range(31, 36),
    "same_relate.json": range(36, 64),
    "single_or.json": range(64, 72),
    "one_hop.json": range(72, 78),
    "two_hop.json": range(78, 84),
    "zero_hop.json": range(84, 90),
}


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small networks: one torch thread is several times faster than contended threads. Restored after the
    module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
