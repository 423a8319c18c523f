"""Trainer, checkpoints, curriculum, configuration and the ``train`` command, on a small generated dataset."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from nscl.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint
from nscl.cli import main
from nscl.config import ConfigError, from_dict, override
from nscl.data import SplitPaths, load_split
from nscl.errors import DataError
from nscl.inference.dataset import QADataset
from nscl.inference.load import model_from_state
from nscl.models.concepts import ConceptConfig
from nscl.models.nscl import ModelConfig
from nscl.models.perception import PerceptionConfig
from nscl.run_config import TrainConfig
from nscl.training.curriculum import MAX_TRAIN_LENGTH, RELEASE_TABLE, stage_at
from nscl.training.trainer import fit_nscl

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_MODEL = ModelConfig(PerceptionConfig(width=8, feature_dim=64, pair_dim=32), ConceptConfig())
SMALL_FLAGS = [
    "--set",
    "model.perception.width=8",
    "--set",
    "model.perception.feature_dim=64",
    "--set",
    "model.perception.pair_dim=32",
]
METRIC_LINE = re.compile(r"^(validation|validationextra)/acc/[a-z_/]+ = \d\.\d{6}$")


def _config_round_trips() -> bool:
    try:
        return from_dict(TrainConfig, dataclasses.asdict(TrainConfig())) == TrainConfig()
    except ConfigError:
        return False


# While TrainConfig does not survive asdict -> from_dict (see test_train_config_round_trips), every `nscl train`,
# every --set/--config and every checkpoint load fails; the tests that go through it are expected to fail then
# and run normally as soon as it is fixed.
CONFIG_BROKEN = not _config_round_trips()
blocked_by_config = pytest.mark.xfail(
    CONFIG_BROKEN,
    strict=True,
    reason="blocked by the TrainConfig round-trip bug (test_train_config_round_trips)",
)


def small_cfg(**kw) -> TrainConfig:
    base = dict(
        curriculum="off",
        batch_size=32,
        epochs=3,
        validation_interval=1,
        save_interval=1,
        data_split=0.9,
        data_trim=120,
        image_height=48,
        seed=0,
        threads=1,
        model=SMALL_MODEL,
    )
    base.update(kw)
    return TrainConfig(**base)


def state_of(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------------------------- fit, resume
@pytest.fixture(scope="module")
def straight_run(gen_root, domain, tmp_path_factory):
    """fit_nscl() for 3 epochs straight, saving every epoch. Three, so that the lr step (after 60% of the epochs, i.e.
    after epoch 2) falls inside the part a resume from epoch 1 retrains."""
    threads = torch.get_num_threads()  # fit_nscl() sets cfg.threads = 1 process-wide
    run = tmp_path_factory.mktemp("run_a")
    try:
        res = fit_nscl(
            small_cfg(),
            domain,
            SplitPaths.resolve(gen_root / "train"),
            run,
            torch.device("cpu"),
            SplitPaths.resolve(gen_root / "val"),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return res


def test_fit_writes_run_files(straight_run):
    run = straight_run.run
    assert run.log.is_file()  # its content: test_train_log_ignores_console_verbosity
    for p in (run.metrics, run.curves, run.checkpoint(), run.checkpoint(1)):
        assert p.is_file() and p.stat().st_size > 0, p
    assert run.checkpoint(2).is_file()
    assert not run.checkpoint(3).exists()  # the last epoch only updates checkpoint_last
    records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 1e-3, 1e-4])
    for r in records:
        assert r["train/questions"] == 120
        assert 0 <= r["validation/acc/qa"] <= 1 and 0 <= r["validationextra/acc/qa"] <= 1
    assert run.curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert straight_run.checkpoint == run.checkpoint()


def test_resume_is_bit_exact(straight_run, gen_root, domain, tmp_path):
    """Epoch 1 + resume for epochs 2-3 gives exactly the parameters of 3 epochs straight."""
    res = fit_nscl(
        small_cfg(),
        domain,
        SplitPaths.resolve(gen_root / "train"),
        tmp_path / "run_b",
        torch.device("cpu"),
        SplitPaths.resolve(gen_root / "val"),
        resume=str(straight_run.run.checkpoint(1)),
        progress=False,
    )
    a, b = state_of(straight_run.model), state_of(res.model)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"differ after resume: {differ}"
    assert res.metrics == straight_run.metrics
    records = [json.loads(line) for line in (tmp_path / "run_b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [2, 3]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 1e-4])


def test_resume_with_other_config_is_refused(straight_run, gen_root, domain, tmp_path):
    with pytest.raises(CheckpointError, match="config differs"):
        fit_nscl(
            small_cfg(lr=0.5),
            domain,
            SplitPaths.resolve(gen_root / "train"),
            tmp_path,
            torch.device("cpu"),
            resume=str(straight_run.run.checkpoint(1)),
            progress=False,
        )


@blocked_by_config
def test_checkpoint_round_trip(straight_run, gen_dataset):
    path = straight_run.checkpoint
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT
    assert raw["epoch"] == 3
    assert {"model", "optimizer", "scheduler", "config", "domain", "torch_rng", "metrics"} <= set(raw)
    state = load_checkpoint(path)
    model, cfg, dom = model_from_state(state, str(path))
    assert cfg == small_cfg()
    assert dom == straight_run.model.domain
    ref = straight_run.model.eval()
    model.eval()
    a, b = state_of(ref), state_of(model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = gen_dataset.make_batch(np.nonzero(gen_dataset.q_image < 4)[0])
    with torch.no_grad():
        for quantize in (False, True):
            o1, s1 = ref(batch.images, batch.boxes, batch.mask, batch.programs, quantize)
            o2, s2 = model(batch.images, batch.boxes, batch.mask, batch.programs, quantize)
            assert torch.equal(o1.scalar.nan_to_num(-1), o2.scalar.nan_to_num(-1))
            assert torch.equal(s1.concept, s2.concept) and torch.equal(s1.relation, s2.relation)
            for k, (idx, logits) in o1.query.items():
                assert torch.equal(idx, o2.query[k][0]) and torch.equal(logits, o2.query[k][1])


def test_resume_in_place_keeps_one_record_per_epoch(straight_run, gen_root, domain, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(straight_run.run.root, run)
    fit_nscl(
        small_cfg(),
        domain,
        SplitPaths.resolve(gen_root / "train"),
        run,
        torch.device("cpu"),
        SplitPaths.resolve(gen_root / "val"),
        resume=str(run / "checkpoint_epoch_1.pth"),
        progress=False,
    )
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]


# --------------------------------------------------------------------------------------------- bad checkpoints
def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize("obj", [{"weights": torch.zeros(2)}, torch.zeros(3), {"format": "other"}])
def test_non_nscl_torch_file(tmp_path, obj):
    p = tmp_path / "foreign.pth"
    torch.save(obj, p)
    with pytest.raises(CheckpointError, match=r"foreign\.pth.*not an nscl checkpoint"):
        load_checkpoint(p)


def test_checkpoint_missing_keys(tmp_path):
    p = tmp_path / "partial.pth"
    save_checkpoint(p, {"config": {}, "domain": {}})
    with pytest.raises(CheckpointError, match="partial.pth.*'model'"):
        load_checkpoint(p)


@blocked_by_config
def test_weights_not_matching_config(straight_run, tmp_path):
    state = load_checkpoint(straight_run.checkpoint)
    state["config"]["model"]["perception"]["width"] = 16
    state.pop("format")
    p = tmp_path / "mismatch.pth"
    save_checkpoint(p, state)
    with pytest.raises(CheckpointError, match="mismatch.pth: weights do not match"):
        model_from_state(load_checkpoint(p), str(p))


@blocked_by_config
def test_cli_evaluate_bad_checkpoints(straight_run, gen_root, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 100)
    state = load_checkpoint(straight_run.checkpoint)
    state["config"]["model"]["perception"]["feature_dim"] = 32
    state.pop("format")
    mismatch = tmp_path / "mismatch.pth"
    save_checkpoint(mismatch, state)
    for ckpt, needle in ((corrupt, "corrupt.pth"), (mismatch, "weights do not match")):
        rc = main(
            [
                "train",
                "--data-dir",
                str(gen_root / "train"),
                "--evaluate",
                "--load",
                str(ckpt),
                "--no-progress",
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2
        assert "error" in err and needle in err, err


# --------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
@blocked_by_config
def test_train_command_end_to_end(gen_root, gen_split, tmp_path, capsys):
    run = tmp_path / "run"
    data = ["--data-dir", str(gen_root / "train"), "--extra-data-dir", str(gen_root / "val")]
    argv = ["train", *data, "--epochs", "3", "--curriculum", "off", "--image-height", "48"]
    argv += [
        "--validation-interval",
        "1",
        "--run-dir",
        str(run),
        "--no-progress",
        "--threads",
        "1",
        *SMALL_FLAGS,
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines and all(METRIC_LINE.match(line) for line in lines), out
    assert re.search(r"^validation/acc/qa = 0\.\d{6}$", out, re.M)
    assert re.search(r"^validationextra/acc/qa = 0\.\d{6}$", out, re.M)
    assert re.search(r"^validationextra/acc/qa/count = \d\.\d{6}$", out, re.M)
    assert re.search(r"^validationextra/acc/concept/color = \d\.\d{6}$", out, re.M)
    assert (run / "train.log").is_file()  # its content: test_train_log_ignores_console_verbosity
    for name in ("metrics.jsonl", "curves.png", "checkpoint_last.pth"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    # Learning: the loss falls, and the train accuracy beats always answering the most common answer.
    majority = Counter(q.answer for q in gen_split.questions).most_common(1)[0][1] / len(gen_split.questions)
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert records[-1]["train/acc/qa"] > majority + 0.05, (records[-1]["train/acc/qa"], majority)

    # --evaluate --load prints the release's lines, with the very numbers of the run's last validation.
    argv = ["train", *data, "--evaluate", "--load", str(run / "checkpoint_last.pth"), "--no-progress"]
    assert main(argv) == 0
    out2 = capsys.readouterr().out
    assert out2 == out


def test_train_log_ignores_console_verbosity(gen_root, domain, tmp_path):
    """The run's train.log holds the epoch lines even when the console shows only warnings (``nscl -q``)."""
    root, nscl_log = logging.getLogger(), logging.getLogger("nscl")
    saved = root.level, nscl_log.level
    root.setLevel(logging.WARNING)  # what `nscl -q` (logging.basicConfig(level=WARNING)) sets
    nscl_log.setLevel(logging.NOTSET)
    try:
        res = fit_nscl(
            small_cfg(epochs=1, data_trim=30, validation_interval=5),
            domain,
            SplitPaths.resolve(gen_root / "train"),
            tmp_path,
            torch.device("cpu"),
            progress=False,
        )
    finally:
        root.setLevel(saved[0])
        nscl_log.setLevel(saved[1])
    text = res.run.log.read_text()
    assert "epoch 1" in text, f"train.log: {text!r}"


# --------------------------------------------------------------------------------------------- CLI errors
def test_evaluate_without_load(gen_root, capsys):
    assert main(["train", "--data-dir", str(gen_root / "train"), "--evaluate"]) == 2
    assert "--load" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_device_cuda_without_cuda(gen_root, capsys):
    assert main(["train", "--data-dir", str(gen_root / "train"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda" in err and "CUDA is not available" in err


@pytest.mark.parametrize(
    ("setting", "needle"),
    [
        ("model.nope=1", "model.nope"),
        ("nope=1", "nope"),
        pytest.param("epochs=abc", "epochs", marks=blocked_by_config),
        pytest.param("model.perception.width=1.5", "width", marks=blocked_by_config),
    ],
)
def test_bad_set_values(gen_root, tmp_path, capsys, setting, needle):
    rc = main(["train", "--data-dir", str(gen_root / "train"), "--run-dir", str(tmp_path), "--set", setting])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error" in err and needle in err, err
    assert not list(tmp_path.iterdir())  # nothing was trained or written


@blocked_by_config
def test_equal_object_question_cannot_be_answered(gen_root, domain, tmp_path, capsys):
    src = gen_root / "train"
    dst = tmp_path / "train"
    shutil.copytree(src, dst)
    data = json.loads((dst / "questions.json").read_text())
    n = len(data["questions"])
    data["questions"].append(
        {
            "image_index": 0,
            "question": "Is the red thing the same as the cube?",
            "answer": "no",
            "program": [
                {"function": "scene", "inputs": [], "value_inputs": []},
                {"function": "filter_color", "inputs": [0], "value_inputs": ["red"]},
                {"function": "unique", "inputs": [1], "value_inputs": []},
                {"function": "scene", "inputs": [], "value_inputs": []},
                {"function": "filter_shape", "inputs": [3], "value_inputs": ["cube"]},
                {"function": "unique", "inputs": [4], "value_inputs": []},
                {"function": "equal_object", "inputs": [2, 5], "value_inputs": []},
            ],
        }
    )
    (dst / "questions.json").write_text(json.dumps(data))
    split = load_split(SplitPaths.resolve(dst), domain)
    with pytest.raises(DataError, match=rf"question {n}: .*cannot answer.*equal_object"):
        QADataset(split, domain, 48)
    rc = main(["train", "--data-dir", str(dst), "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and f"question {n}" in err and "cannot answer" in err, err


# --------------------------------------------------------------------------------------------- training data
def test_dataset_resolution_and_boxes(gen_split, domain):
    """Images are resized to the requested height (aspect kept) and boxes scaled with them."""
    ds = QADataset(gen_split, domain, 24)
    assert (ds.height, ds.width) == (24, 32)
    assert ds.images.shape == (50, 3, 24, 32) and ds.images.dtype == torch.uint8
    for i, s in enumerate(ds.scenes):
        want = torch.tensor([b.as_list() for b in s.boxes]) / 2
        torch.testing.assert_close(ds.boxes[i], want)
    assert len(ds) == 500 and ds.n_objects.tolist() == [len(s.objects) for s in ds.scenes]


def test_batches_group_questions_by_image(gen_dataset):
    ds = gen_dataset
    ids = np.arange(0, len(ds), 2)
    for rng in (None, np.random.default_rng(0)):
        batches = list(ds.batches(ids, 32, rng))
        flat = np.concatenate(batches)
        assert sorted(flat.tolist()) == ids.tolist()
        owner = {}
        for k, b in enumerate(batches):
            for img in set(ds.q_image[b].tolist()):
                assert owner.setdefault(img, k) == k, "an image's questions straddle two batches"
        assert all(len(b) >= 32 for b in batches[:-1])
    assert list(ds.batches(np.array([], dtype=np.int64), 32, None)) == []


def test_split_train_dev_by_image(gen_dataset):
    from nscl.inference.dataset import split_train_dev

    ds = gen_dataset
    train, dev = split_train_dev(ds, 0.8, seed=0)
    assert len(train) + len(dev) == len(ds)
    ti, di = set(ds.q_image[train].tolist()), set(ds.q_image[dev].tolist())
    assert not ti & di and len(ti) == 40 and len(di) == 10
    assert split_train_dev(ds, 0.8, seed=0)[1].tolist() == dev.tolist()
    assert len(split_train_dev(ds, 1.0, seed=0)[1]) == 0


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.5, 0.95, 1.0])
def test_parser_split_is_the_trainers_split(gen_dataset, gen_split, domain, fraction):
    """The parser's split by image (questions as ParserExamples) keeps exactly the trainer's images, at every
    fraction (they used to differ at 0)."""
    from nscl.inference.dataset import split_train_dev
    from nscl.inference.examples import examples_from_questions, split_by_image

    ds = gen_dataset
    train_q, dev_q = split_train_dev(ds, fraction, seed=3)
    want_train = {ds.scenes[i].image_index for i in np.unique(ds.q_image[train_q])}
    want_dev = {ds.scenes[i].image_index for i in np.unique(ds.q_image[dev_q])}
    examples = examples_from_questions(gen_split.questions, domain)
    train, dev = split_by_image(examples, list(gen_split.scenes), fraction, seed=3)
    assert {e.image_index for e in train} == want_train
    assert {e.image_index for e in dev} == want_dev
    assert len(train) + len(dev) == len(examples)


def test_qa_meter_weights_by_questions():
    from nscl.metrics import QAMeter, format_table

    m = QAMeter()
    m.update(["count"] * 3, [True, False, True])
    m.update(["exist"], [True])
    got = m.metrics("validation")
    assert got == {
        "validation/acc/qa": 0.75,
        "validation/acc/qa/count": 2 / 3,
        "validation/acc/qa/exist": 1.0,
    }
    table = format_table({**got, "validationextra/acc/qa": 0.5}, "validation")
    assert table.splitlines() == [
        "validation/acc/qa = 0.750000",
        "validation/acc/qa/count = 0.666667",
        "validation/acc/qa/exist = 1.000000",
    ]


def test_boxes_follow_each_image_resize(gen_root, domain, tmp_path):
    from PIL import Image

    dst = tmp_path / "train"
    shutil.copytree(gen_root / "train", dst)
    data = json.loads((dst / "scenes.json").read_text())
    scene = data["scenes"][1]
    im = Image.open(dst / "images" / scene["image_filename"])
    im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(dst / "images" / scene["image_filename"])
    for o in scene["objects"]:
        o["box"] = [2 * v for v in o["box"]]
        o.pop("mask", None)
    (dst / "scenes.json").write_text(json.dumps(data))
    ref = QADataset(load_split(SplitPaths.resolve(gen_root / "train"), domain), domain, 48)
    ds = QADataset(load_split(SplitPaths.resolve(dst), domain), domain, 48)
    assert (ds.width, ds.height) == (64, 48)
    torch.testing.assert_close(ds.boxes[1], ref.boxes[1])


# --------------------------------------------------------------------------------------------- curriculum
# Reference epochs of a 100-epoch run and the release's (max objects, max program length).
RELEASE_STAGES = {
    1: (3, 4),
    5: (3, 4),
    6: (3, 6),
    10: (3, 6),
    11: (3, 8),
    15: (3, 8),
    16: (4, 8),
    25: (4, 8),
    26: (4, 12),
    35: (4, 12),
    36: (5, 12),
    45: (5, 12),
    46: (6, 12),
    55: (6, 12),
    56: (7, 16),
    65: (7, 16),
    66: (8, 20),
    75: (8, 20),
    76: (9, 22),
    90: (9, 22),
    91: (10, 25),
    100: (10, 25),
}


def test_curriculum_matches_release_table():
    for epoch, (s, l) in RELEASE_STAGES.items():
        st = stage_at(epoch, 100)
        assert (st.max_objects, st.max_length) == (s, l), epoch
    stages = [stage_at(e, 100).index for e in range(1, 101)]
    assert stages == sorted(stages) and stages[0] == 0 and stages[-1] == len(RELEASE_TABLE) - 1
    assert max(stage_at(e, 100).max_length for e in range(1, 101)) == MAX_TRAIN_LENGTH == 25


def test_curriculum_scales_to_short_runs():
    # epoch e of 10 is reference epoch ceil(10 e)
    got = [(stage_at(e, 10).max_objects, stage_at(e, 10).max_length) for e in range(1, 11)]
    assert got == [(3, 6), (4, 8), (4, 12), (5, 12), (6, 12), (7, 16), (8, 20), (9, 22), (9, 22), (10, 25)]
    # 200 epochs: every stage twice as long
    assert (stage_at(10, 200).max_length, stage_at(11, 200).max_length) == (4, 6)
    for total in (1, 3, 7, 10, 33, 250):
        idx = [stage_at(e, total).index for e in range(1, total + 1)]
        assert idx == sorted(idx) and idx[-1] == len(RELEASE_TABLE) - 1, total


def test_curriculum_uses_the_end_of_each_epochs_reference_span():
    """Epoch e of E is reference epoch ceil(100 e / E) (curriculum.py's docstring)."""
    assert stage_at(1, 19).max_length == 6  # reference 5.26 -> 6, the second stage
    assert stage_at(1, 21).max_length == 4  # reference 4.76 -> 5, still the first
    assert stage_at(2, 7).max_length == 12  # reference 28.6 -> 29


def test_curriculum_off():
    st = stage_at(1, 100, enabled=False)
    assert st.max_objects >= 10**6 and st.max_length == MAX_TRAIN_LENGTH


def test_eligible_filters_by_objects_and_length(gen_dataset, gen_split):
    ds = gen_dataset
    ids = np.arange(len(ds))
    n_obj = {s.image_index: len(s.objects) for s in gen_split.scenes.values()}
    questions = gen_split.questions
    seen = set()
    for s, l in [(3, 4), (3, 8), (4, 12), (6, 16), (10, 25), (10**6, 25)]:
        got = ds.eligible(ids, s, l)
        want = [
            i
            for i in ids
            if n_obj[questions[ds.q_index[i]].image_index] <= s and len(questions[ds.q_index[i]].program) <= l
        ]
        assert got.tolist() == want, (s, l)
        seen.add(len(got))
    assert len(seen) >= 4  # the stages really differ on this data
    sub = ids[::3]
    assert set(ds.eligible(sub, 5, 12).tolist()) <= set(sub.tolist())


def test_release_recipe_defaults(domain):
    """NSCL-REFERENCE section 7: AdamW, lr 1e-3, weight decay 1e-4, lr x0.1 after 60% of the epochs, batch 32,
    100 epochs, validate and save every 5, a 95/5 split, curriculum on."""
    from nscl.models.nscl import NSCL
    from nscl.training.trainer import build_optimizer

    cfg = TrainConfig()
    assert (cfg.lr, cfg.weight_decay, cfg.lr_decay_at, cfg.batch_size, cfg.epochs) == (
        1e-3,
        1e-4,
        0.6,
        32,
        100,
    )
    assert (cfg.validation_interval, cfg.save_interval, cfg.data_split, cfg.curriculum) == (5, 5, 0.95, "all")
    torch.manual_seed(0)
    model = NSCL(domain, SMALL_MODEL)
    opt, sched = build_optimizer(model, dataclasses.replace(cfg, epochs=10))
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 1e-4
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: a no-op, but keeps the optimizer/scheduler call order
        sched.step()
    assert lrs == pytest.approx([1e-3] * 6 + [1e-4] * 4)


# --------------------------------------------------------------------------------------------- config
@blocked_by_config
def test_from_dict_builds_nested_config():
    cfg = from_dict(
        TrainConfig, {"epochs": 3, "lr": 1, "model": {"perception": {"width": 16, "pretrained": None}}}
    )
    assert cfg.epochs == 3 and cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.model.perception.width == 16 and cfg.model.concepts == ConceptConfig()
    assert from_dict(TrainConfig, dataclasses.asdict(small_cfg())) == small_cfg()
    assert from_dict(TrainConfig, None) == TrainConfig()


def test_train_config_round_trips():
    """asdict -> from_dict is the path of override() (every `nscl train`), --config and checkpoint loading."""
    cfg = TrainConfig()
    assert from_dict(TrainConfig, dataclasses.asdict(cfg)) == cfg
    assert override(cfg, {"epochs": 3}).epochs == 3


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"nope": 1}, "nope"),
        ({"model": {"perception": {"nope": 1}}}, "nope"),
        ({"epochs": "3"}, "epochs"),
        ({"epochs": 2.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"lr": "fast"}, "lr"),
        ({"curriculum": 1}, "curriculum"),
        ({"model": {"perception": {"pretrained": 3}}}, "pretrained"),
        ({"model": {"concepts": {"known_belong": 1}}}, "known_belong"),
    ],
)
def test_from_dict_rejects(data, needle):
    with pytest.raises(ConfigError, match=needle):
        from_dict(TrainConfig, data)


@pytest.mark.parametrize("value", [5, [1], "abc"])
def test_from_dict_rejects_non_mapping_section(value):
    with pytest.raises(ConfigError, match="model"):
        from_dict(TrainConfig, {"model": value})


def test_set_whole_section_is_usage_error(gen_root, tmp_path, capsys):
    rc = main(
        ["train", "--data-dir", str(gen_root / "train"), "--run-dir", str(tmp_path), "--set", "model=5"]
    )
    assert rc == 2 and "model" in capsys.readouterr().err


@blocked_by_config
def test_override_dotted_keys():
    cfg = TrainConfig()
    new = override(cfg, {"model.perception.width": 16, "epochs": 7, "model.concepts.known_belong": True})
    assert new.model.perception.width == 16 and new.epochs == 7 and new.model.concepts.known_belong
    assert cfg == TrainConfig()  # the original is untouched
    for bad in ({"model.nope": 1}, {"nope.width": 1}, {"epochs.x": 1}, {"model.perception.width": "wide"}):
        with pytest.raises(ConfigError):
            override(cfg, bad)


@blocked_by_config
def test_config_file_and_flags(gen_root, tmp_path, capsys):
    """--config gives the values, flags override them; a bad file key is a usage error."""
    from nscl.cli import build_parser, train_config_from_args

    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"epochs": 9, "lr": 0.01, "model": {"perception": {"width": 16}}}))
    args = build_parser().parse_args(
        ["train", "--data-dir", str(gen_root / "train"), "--config", str(conf), "--lr", "0.002"]
    )
    cfg = train_config_from_args(args)
    assert (cfg.epochs, cfg.lr, cfg.model.perception.width) == (9, 0.002, 16)
    conf.write_text(json.dumps({"epochz": 9}))
    assert main(["train", "--data-dir", str(gen_root / "train"), "--config", str(conf)]) == 2
    assert "epochz" in capsys.readouterr().err


def test_data_dir_must_exist(tmp_path, capsys):
    assert main(["train", "--data-dir", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_paths_are_resolved(gen_root):
    p = SplitPaths.resolve(gen_root / "train")
    assert isinstance(p.scenes, Path) and p.images.is_dir()


# --------------------------------------------------------------------------------------------- data loading
def test_lazy_images_decode_the_same_pixels(gen_split, gen_dataset, domain):
    lazy = QADataset(gen_split, domain, gen_dataset.height, lazy_images=True)
    assert lazy.images.shape[0] == 0  # nothing decoded up front
    rows = np.array([3, 0, 7])
    a, b = gen_dataset.scene_batch(rows), lazy.scene_batch(rows)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_lazy_images_and_loader_workers_train_identically(gen_root, domain, tmp_path):
    """Decoding per batch in two DataLoader worker processes trains exactly as decoding up front in-process."""
    threads = torch.get_num_threads()
    runs = []
    try:
        for i, kw in enumerate([{}, {"lazy_images": True, "lazy_programs": True, "loader_workers": 2}]):
            res = fit_nscl(
                small_cfg(epochs=2, **kw),
                domain,
                SplitPaths.resolve(gen_root / "train"),
                tmp_path / f"run{i}",
                torch.device("cpu"),
                progress=False,
            )
            runs.append([json.loads(x) for x in res.run.metrics.read_text().splitlines()])
    finally:
        torch.set_num_threads(threads)
    keys = ("train/loss", "train/acc/qa", "validation/acc/qa")
    assert [[r[k] for k in keys] for r in runs[0]] == [[r[k] for k in keys] for r in runs[1]]
