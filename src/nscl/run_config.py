"""The settings of a training run, stored in every checkpoint: :class:`TrainConfig` (``nscl train``, the
``--config`` JSON files, ``--set key=value``) and its nested :class:`ParserTrainConfig` (``--set parser.*``).

Plain frozen dataclasses: :func:`nscl.config.from_dict` builds them from JSON and rejects unknown keys, wrong
types and string options outside their ``Literal`` choices. Training reads them to train, inference reads the
ones stored in a checkpoint (image height, the parser's guidance settings), so they live below both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from .config import ConfigError, check_options, from_dict
from .errors import DataError
from .io import read_json
from .models.nscl import ModelConfig
from .models.parser import ParserConfig

TrainingTarget = Literal["derender", "parser", "all"]
Curriculum = Literal["all", "off"]
LRSchedule = Literal["step", "cosine"]
Reward = Literal["answer", "release"]
Baseline = Literal["moving", "loo"]
ParserInit = Literal["new", "load"]
RewardPerception = Literal["model", "oracle"]

GUIDED_BEAM = 8  # execution-guided decoding: beam candidates tried when the greedy parse's references fail
MIN_REFERENT_P = 0.05  # the reference check's bar: P(every single-object reference holds exactly one object)


@dataclass(frozen=True)
class ParserTrainConfig:
    """Parser training (``TrainConfig.parser``; ``--set parser.epochs=40``)."""

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
    reward: Reward = "answer"  # "answer": 1 if right, minus `baseline`; "release": 10 - QA loss, softmax
    baseline_momentum: float = 0.9
    # "answer" reward's baseline: "moving" (moving average of the mean reward) or "loo" (leave-one-out: the
    # mean reward of the question's other samples, so only questions with both right and wrong samples move)
    baseline: Baseline = "loo"
    entropy_weight: float = 0.0
    # self-training after REINFORCE, self_train_rounds times: label every training question with the most
    # probable program that earns the reward (greedy, else a beam candidate; pseudo_label) and fit them, with
    # the K annotations, for self_train_epochs supervised epochs at self_train_lr. A later round relabels with
    # the sharper parser, so a phrasing whose labels were split between two programs settles on the right one.
    self_train_epochs: int = 3
    self_train_rounds: int = 4
    self_train_lr: float = 5e-4
    supervised_weight: float = 1.0  # REINFORCE steps also fit a batch of the K annotations
    # supervised: read ordinary words as <UNK> with this probability, so that a word never seen in training
    # (read as <UNK> by nscl ask) does not derail the parse (benchmarks/phrasing.py)
    word_dropout: float = 0.1
    # "new": a fresh parser; "load": continue from the parser of the --load checkpoint (e.g. more REINFORCE
    # epochs with parser.epochs=0; the K annotations are drawn as before, with the same seed)
    init: ParserInit = "new"
    perception: RewardPerception = "model"  # reward executor: frozen NSCL of --load, or scene annotations
    # CLEVR questions only refer to single objects unambiguously: a sampled program whose references hold
    # exactly one object with probability below this (Output.referent_logp) earns no reward, however it
    # answers, and execution-guided decoding (guided_beam > 0) rejects such parses. 0 turns the check off.
    min_referent_p: float = MIN_REFERENT_P
    # the REINFORCE reward and self-training labels also require a program to fit its question's wording: the
    # kind of answer asked and every concept named (inference/guided.WordingCheck); a right answer reached by a
    # program that ignores "blue" in "cubes or blue things" earns nothing
    wording_reward: bool = True
    guided_beam: int = GUIDED_BEAM  # evaluation and ask: beam of execution-guided decoding; 0 = off
    # Learning from answers alone (--training-target all without --load; training/answers_only.py): the lessons,
    # each [epochs, max objects, max question words, perception learns (0/1), parser learns (0/1), optionally
    # parser proposals per question the search misses], and the
    # candidate search's budget (grammar states per question) and slack (actions beyond the shortest candidate)
    lessons: tuple[tuple[int, ...], ...] = ()
    search_expansions: int = 5000
    search_slack: int = 2
    # the search reads a pronoun's referent where the pronoun stands ("the block left of it": models/anaphora)
    search_anaphora: bool = True
    length_prior: float = 1.0  # nats per program node in the candidates' posterior (prefers shorter programs)
    # ... and nats against a candidate whose answer is wrong, and the weight of log P(its single-object references
    # hold one object each) (training/answers_only.Evidence)
    wrong_answer_cost: float = 20.0
    referent_weight: float = 1.0
    # nats of that log-probability forgiven (log 2 = 0.69: references all holding one object with probability 0.5
    # or more cost nothing, so a program is not held back for reading more of them); and whether the wording fixes
    # a yes/no question's root: "is there ...", "any other ..." ask if something exists (language.asks_existence),
    # one with no word that may ask it ("does the cube match the ball in size") asks none
    # (language.may_ask_existence), and one that names no comparison of counts compares none (on: held-out program
    # exact match 0.912 -> 0.998 on the full answers-only run, README "From answers alone")
    referent_free: float = 0.0
    wording_roots: bool = True
    # Candidates per question that the parser and perception learn from in a step: the most probable under the
    # posterior, scored first without gradients (0: all). Long questions have tens of candidates.
    candidates_kept: int = 4
    model: ParserConfig = field(default_factory=ParserConfig)

    def __post_init__(self) -> None:
        check_options(self, "parser.")
        if not 0.0 <= self.min_referent_p < 1.0:
            raise ConfigError(f"parser.min_referent_p must be in [0, 1), not {self.min_referent_p}")
        if self.guided_beam < 0:
            raise ConfigError(f"parser.guided_beam must be >= 0, not {self.guided_beam}")
        for name in ("length_prior", "wrong_answer_cost", "referent_weight", "referent_free"):
            if getattr(self, name) < 0:
                raise ConfigError(f"parser.{name} must be >= 0, not {getattr(self, name)}")
        if self.self_train_epochs < 0 or self.self_train_rounds < 0:
            raise ConfigError("parser.self_train_epochs and parser.self_train_rounds must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    training_target: TrainingTarget = "derender"
    curriculum: Curriculum = "all"
    # [(last reference epoch, max objects, max raw program length), ...] for a 100-epoch run, scaled to
    # `epochs`; empty = the release's table (training/curriculum.py).
    curriculum_table: tuple[tuple[int, int, int], ...] = ()
    batch_size: int = 32  # questions per batch (grouped by image)
    eval_batch_size: int = 256
    epochs: int = 100
    validation_interval: int = 5
    save_interval: int = 5
    data_split: float = 0.95  # fraction of training images kept for training; the rest is the dev split
    data_trim: float = 0.0  # keep only this fraction (0 < f < 1) or this many (f >= 1) training questions
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay_at: float = 0.6  # "step": lr x 0.1 after this fraction of the epochs
    # "step" (the release's): constant, then x 0.1 at lr_decay_at; "cosine": from lr down to lr / 100 along a
    # half cosine over the epochs (set once per epoch)
    lr_schedule: LRSchedule = "step"
    # An epoch whose curriculum stage admits fewer questions than this repeats them (reshuffled) up to this
    # many, so that short early lessons on small datasets still get enough optimisation steps.
    min_questions_per_epoch: int = 0
    image_height: int = 128
    seed: int = 0
    threads: int = 0  # torch CPU threads, 0 = default
    # Data: lazy_images decodes images per batch instead of all up front (CLEVR-size data); loader_workers > 0
    # assembles batches (image decoding included) in that many DataLoader worker processes, pinned in memory on
    # CUDA. lazy_programs keeps the questions as columns (nscl.question_table) and compiles each program when a
    # batch first needs it: a 700K-question file loads in seconds. None of them changes what is trained on.
    lazy_images: bool = False
    lazy_programs: bool = False
    loader_workers: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    parser: ParserTrainConfig = field(default_factory=ParserTrainConfig)  # --training-target parser|all

    def __post_init__(self) -> None:
        check_options(self)
        for name in ("batch_size", "eval_batch_size", "validation_interval", "save_interval", "image_height"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, not {self.epochs}")
        if self.loader_workers < 0:
            raise ConfigError(f"loader_workers must be >= 0, not {self.loader_workers}")


def builtin_configs() -> list[str]:
    """Names of the configurations shipped in the package (``src/nscl/configs/*.json``)."""
    root = resources.files("nscl").joinpath("configs")
    return sorted(p.name[: -len(".json")] for p in root.iterdir() if p.name.endswith(".json"))


def load_config(name_or_path: str | Path) -> TrainConfig:
    """A :class:`TrainConfig` from a JSON file, or from a shipped configuration by name (``demo``, ``long``):
    a path that exists wins; ``configs/NAME.json`` and ``NAME`` name the shipped one when no such file exists."""
    p = Path(name_or_path)
    if p.exists():
        data, source = read_json(p), str(p)
    else:
        name = p.name[: -len(".json")] if p.name.endswith(".json") else p.name
        if name not in builtin_configs() or p.parent not in (Path("."), Path("configs")):
            raise DataError(
                f"{name_or_path}: no such config file (shipped configs: {', '.join(builtin_configs())})"
            )
        text = resources.files("nscl").joinpath("configs", f"{name}.json").read_text(encoding="utf-8")
        data, source = json.loads(text), f"nscl/configs/{name}.json"
    try:
        return from_dict(TrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
