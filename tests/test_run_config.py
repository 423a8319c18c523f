"""Typed options: every string setting is a ``Literal`` checked when the config is built, with the CLI's one-line
error; shipped configurations found by name, also from a non-editable install."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nscl.cli import main
from nscl.config import ConfigError, from_dict, override
from nscl.errors import DataError
from nscl.models.perception import PerceptionConfig
from nscl.run_config import ParserTrainConfig, TrainConfig, builtin_configs, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "key, value, options",
    [
        ("training_target", "parsr", "'derender', 'parser', 'all'"),
        ("curriculum", "none", "'all', 'off'"),
        ("parser.reward", "answers", "'answer', 'release'"),
        ("parser.baseline", "mean", "'moving', 'loo'"),
        ("parser.init", "old", "'new', 'load'"),
        ("parser.perception", "gt", "'model', 'oracle'"),
        ("model.perception.backbone", "resnet50", "'small', 'resnet34'"),
        ("model.perception.norm", "layer", "'group', 'batch', 'none'"),
    ],
)
def test_string_option_outside_its_choices_is_refused(key, value, options):
    with pytest.raises(ConfigError) as e:
        override(TrainConfig(), {key: value})
    assert str(e.value) == f"config key {key!r}: {value!r} is not one of {options}"


def test_literal_checked_when_built_directly_and_from_json():
    with pytest.raises(ConfigError, match="training_target"):
        TrainConfig(training_target="parsr")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="parser.reward"):
        ParserTrainConfig(reward="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="model.perception.backbone"):
        PerceptionConfig(backbone="vgg")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="curriculum"):
        from_dict(TrainConfig, {"curriculum": "none"})
    with pytest.raises(ConfigError, match="curriculum"):
        from_dict(TrainConfig, {"curriculum": True})  # a bool is not the string "all"
    assert (
        from_dict(TrainConfig, {"curriculum": "off", "parser": {"reward": "release"}}).parser.reward
        == "release"
    )


def test_cli_set_bad_option_is_one_line_usage_error(tiny_dir, tmp_path, capsys):
    rc = main(
        [
            "train",
            "--data-dir",
            str(tiny_dir),
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            "training_target=parsr",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert (
        err
        == "nscl train: error: config key 'training_target': 'parsr' is not one of 'derender', 'parser', 'all'"
    )
    assert not (tmp_path / "r").exists()  # refused before anything is written


def test_numeric_settings_checked():
    with pytest.raises(ConfigError, match="batch_size must be at least 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="min_referent_p"):
        ParserTrainConfig(min_referent_p=1.0)


def test_shipped_configs_by_name_and_legacy_path(tmp_path, monkeypatch):
    assert {"demo", "full", "full-quick", "long"} <= set(builtin_configs())
    text = (ROOT / "src" / "nscl" / "configs" / "demo.json").read_text()
    want = from_dict(TrainConfig, json.loads(text))
    monkeypatch.chdir(tmp_path)  # not the checkout: the package data is what is read
    assert load_config("demo") == want
    assert load_config("configs/demo.json") == want  # the path the README used before configs moved
    assert load_config("long").epochs == 40
    with pytest.raises(DataError, match="nope.json: no such config file .*demo, full, full-quick, long"):
        load_config("nope.json")
    own = tmp_path / "mine.json"
    own.write_text(json.dumps({"epochs": 3, "threads": 1}))
    assert load_config(own) == TrainConfig(epochs=3, threads=1)
    own.write_text(json.dumps({"epochs": 3, "curriculum": "none"}))
    with pytest.raises(ConfigError, match="mine.json: config key 'curriculum'"):
        load_config(own)


@pytest.mark.slow
def test_non_editable_install_runs_demo_help_and_finds_its_config(tmp_path):
    """``pip install .`` (not editable) ships the configs: ``nscl demo --help`` runs and the demo config is
    the package's, from a directory outside the checkout."""
    src = tmp_path / "checkout"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    site = tmp_path / "site"
    # Offline when the environment already has a recent setuptools; otherwise pip fetches the build backend.
    iso = []
    if importlib.util.find_spec("setuptools") is not None:
        import setuptools

        if int(setuptools.__version__.split(".")[0]) >= 77:
            iso = ["--no-build-isolation"]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            *iso,
            "--target",
            str(site),
            str(src),
        ],
        check=True,
        capture_output=True,
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import nscl, nscl.run_config as r; print(nscl.__file__); print(r.load_config('demo').epochs)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    shipped = json.loads((ROOT / "src" / "nscl" / "configs" / "demo.json").read_text())
    assert out[0].startswith(str(site)) and out[1] == str(shipped["epochs"])
    helped = subprocess.run(
        [sys.executable, "-m", "nscl", "demo", "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert helped.returncode == 0 and "--config" in helped.stdout and "default: demo" in helped.stdout
