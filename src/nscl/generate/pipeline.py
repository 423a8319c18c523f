"""``nscl generate``: scenes, images, masks and questions for train/val/test, in the release's layout.

Work is cut into chunks of ``chunk_size`` images (250, the interval at which the question engine resets its
balancing counts, as CLEVR's does). Each chunk is seeded from (seed, split, chunk) alone, so the output does
not depend on the number of workers, and a chunk's result is stored atomically in ``<split>/.parts/`` as soon as
it is done. A killed run leaves only complete parts and complete images; rerunning the same command reuses them
and writes ``scenes.json``, ``questions.json`` and ``vocab.json`` atomically at the end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..domain import Domain
from ..errors import NSCLError
from ..io import atomic_write, atomic_write_json, read_json
from ..progress import progress_bar
from ..symbolic import SceneFacts
from ..vocab import Vocab
from .blender import find_blender
from .scene import SceneConfig, sample_scene

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
LICENSE = "Creative Commons Attribution (CC BY 4.0)"


@dataclass(frozen=True)
class GenerateConfig:
    out: str
    seed: int = 0
    train_images: int = 0
    val_images: int = 0
    test_images: int = 0
    questions_per_image: int = 10
    width: int = 480
    height: int = 320
    min_objects: int = 3
    max_objects: int = 10
    cogent: str | None = None
    templates: str | None = None  # a folder of CLEVR-format template files; None = ours
    synonyms: str | None = None  # a CLEVR-format synonyms.json; None = ours
    supersample: int = 2
    workers: int = 0  # 0 = all cores (one process with renderer blender, which uses every core itself)
    chunk_size: int = 250
    prefix: str = "CLEVR"
    # "I/N" (0 <= I < N): make only the chunks c with c % N == I and keep them in <split>/.parts/; the same command
    # without --shard, run where every shard's parts were gathered, writes the final files (the bytes of a run
    # without shards, since each chunk depends only on seed, split and chunk number)
    shard: str | None = None
    renderer: str = (
        "numpy"  # "numpy" (ours, fast) or "blender" (Cycles, CLEVR's look; needs Blender installed)
    )
    blender_samples: int = 64  # Cycles samples per pixel with renderer "blender"
    blender: str = "blender"  # the Blender executable

    def __post_init__(self) -> None:
        # Validate up front (clear one-line errors before anything is written).
        SceneConfig(
            min_objects=self.min_objects,
            max_objects=self.max_objects,
            width=self.width,
            height=self.height,
            cogent=self.cogent,
        )
        if self.renderer not in ("numpy", "blender"):
            raise ValueError(f"renderer must be numpy or blender, got {self.renderer!r}")
        for name in ("supersample", "chunk_size", "questions_per_image", "blender_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("train_images", "val_images", "test_images", "workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        self.shard_of()

    def shard_of(self) -> tuple[int, int] | None:
        """(I, N) of ``shard`` "I/N", None without; ValueError names a malformed one."""
        if self.shard is None:
            return None
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError:
            raise ValueError(f"shard must be I/N (e.g. 0/4), got {self.shard!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"shard {self.shard}: I must be in 0..N-1")
        return i, n

    def splits(self) -> list[tuple[str, int]]:
        return [
            (s, n)
            for s, n in (("train", self.train_images), ("val", self.val_images), ("test", self.test_images))
            if n > 0
        ]

    def fingerprint(self) -> str:
        """Everything that determines the output (not the worker count)."""
        d = asdict(self)
        for k in ("out", "workers", "shard", "blender"):
            d.pop(k)
        if self.renderer == "numpy":  # as before the Blender back-end existed
            for k in ("renderer", "blender_samples"):
                d.pop(k)
        else:
            d.pop("supersample")  # the ray caster's antialiasing; Blender's is its samples
        d["version"] = __version__
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ChunkJob:
    cfg: GenerateConfig
    domain: Domain
    split: str
    chunk: int
    start: int
    stop: int
    threads: int = 0  # Blender's render threads (0: all cores); the NumPy renderer runs on one


def _save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    atomic_write(path, lambda f: Image.fromarray(image).save(f, format="PNG", compress_level=3))


def run_chunk(job: ChunkJob) -> dict:
    """Render and question one chunk; returns its scene and question records."""
    from .blender import BlenderImage, render_blender
    from .questions import QuestionEngine
    from .render import render, render_ids
    from .scene_masks import encode_masks
    from .template_files import load_synonyms, load_templates

    cfg, domain = job.cfg, job.domain
    scfg = SceneConfig(
        min_objects=cfg.min_objects,
        max_objects=cfg.max_objects,
        width=cfg.width,
        height=cfg.height,
        cogent=cfg.cogent,
    )
    engine = QuestionEngine(
        domain,
        load_templates(Path(cfg.templates) if cfg.templates else None),
        load_synonyms(Path(cfg.synonyms) if cfg.synonyms else None),
        questions_per_image=cfg.questions_per_image,
        wording_seed=np.random.SeedSequence(cfg.seed, spawn_key=(SPLIT_CODES[job.split], job.chunk, 1)),
    )
    seq = np.random.SeedSequence(cfg.seed, spawn_key=(SPLIT_CODES[job.split], job.chunk))
    rng = np.random.default_rng(seq)
    image_dir = Path(cfg.out) / job.split / "images"
    scenes, questions = [], []
    for_blender: list[BlenderImage] = []
    for index in range(job.start, job.stop):
        filename = f"{cfg.prefix}_{job.split}_{index:06d}.png"
        sampled = sample_scene(domain, scfg, rng, index, job.split, filename)
        seed = int(rng.integers(2**31))  # drawn by both renderers: scenes and questions do not depend on it
        if cfg.renderer == "blender":
            ids = render_ids(sampled.objects, sampled.camera, cfg.width, cfg.height)
            for_blender.append(
                BlenderImage(
                    image_dir / filename,
                    sampled.objects,
                    sampled.camera,
                    sampled.lamps,
                    cfg.width,
                    cfg.height,
                    cfg.blender_samples,
                    seed,
                )
            )
        else:
            result = render(
                sampled.objects,
                sampled.camera,
                sampled.lamps,
                cfg.width,
                cfg.height,
                supersample=cfg.supersample,
                seed=seed,
            )
            ids = result.object_ids
            _save_png(image_dir / filename, result.image)
        record = sampled.record
        for obj, (rle, box, _area) in zip(record["objects"], encode_masks(ids, len(record["objects"]))):
            obj["mask"], obj["box"] = rle, box  # every object is visible (the scene sampler ensures it)
        scenes.append(record)
        facts = SceneFacts(
            tuple({a.name: o[a.name] for a in domain.attributes} for o in record["objects"]),
            record["relationships"],
        )
        for q in engine.generate(facts, rng):
            questions.append(
                {
                    "image_index": index,
                    "image_filename": filename,
                    "split": job.split,
                    "question": q.text,
                    "answer": q.answer,
                    "program": q.program.to_json(),
                    "question_family_index": q.family,
                    "template_filename": q.template_filename,
                }
            )
    render_blender(for_blender, cfg.blender, job.threads, work_dir=image_dir.parent)
    return {"scenes": scenes, "questions": questions}


def _jobs(cfg: GenerateConfig, domain: Domain, split: str, n: int) -> list[ChunkJob]:
    return [
        ChunkJob(cfg, domain, split, k, start, min(start + cfg.chunk_size, n))
        for k, start in enumerate(range(0, n, cfg.chunk_size))
    ]


def _part_path(cfg: GenerateConfig, job: ChunkJob) -> Path:
    return Path(cfg.out) / job.split / ".parts" / f"chunk_{job.chunk:05d}.json"


def _load_part(cfg: GenerateConfig, job: ChunkJob) -> dict | None:
    p = _part_path(cfg, job)
    if not p.exists():
        return None
    try:
        part = read_json(p)
    except NSCLError:
        return None
    if not isinstance(part, dict) or part.get("fingerprint") != cfg.fingerprint():
        return None
    if not isinstance(part.get("scenes"), list) or not isinstance(part.get("questions"), list):
        return None
    images = Path(cfg.out) / job.split / "images"
    if not all((images / s["image_filename"]).is_file() for s in part["scenes"]):
        return None
    return part


def _complete(cfg: GenerateConfig) -> dict[str, dict[str, int]] | None:
    """Per-split counts if every split's final files exist and were made with the same settings."""
    summary = {}
    for split, n in cfg.splits():
        paths = [Path(cfg.out) / split / f for f in ("scenes.json", "questions.json", "vocab.json")]
        if not all(p.exists() for p in paths):
            return None
        try:
            scenes = read_json(paths[0])
            questions = read_json(paths[1])
        except NSCLError:
            return None
        if (
            scenes.get("info", {}).get("fingerprint") != cfg.fingerprint()
            or len(scenes.get("scenes", [])) != n
        ):
            return None
        summary[split] = {"images": n, "questions": len(questions.get("questions", []))}
    return summary


def generate_dataset(cfg: GenerateConfig, domain: Domain, progress: bool = True) -> dict[str, dict[str, int]]:
    """Generate every requested split; returns per-split counts of images and questions."""
    if not cfg.splits():
        raise NSCLError("nothing to generate: give --train-images, --val-images or --test-images")
    out = Path(cfg.out)
    shard = cfg.shard_of()
    done_already = _complete(cfg)
    if done_already is not None:
        log.info("%s already holds this dataset (same settings); nothing to do", out)
        return done_already
    if cfg.renderer == "blender":
        find_blender(cfg.blender)  # before anything is written, with a clear error
    jobs = [j for split, n in cfg.splits() for j in _jobs(cfg, domain, split, n)]
    results: dict[tuple[str, int], dict] = {}
    todo = []
    for j in jobs:
        part = _load_part(cfg, j)
        if part is not None:
            results[(j.split, j.chunk)] = part
        else:
            todo.append(j)
    if shard is not None:
        mine = [j for j in jobs if j.chunk % shard[1] == shard[0]]
        todo = [j for j in todo if j.chunk % shard[1] == shard[0]]
        log.info(
            "shard %s: %d of %d chunks, %d already done",
            cfg.shard,
            len(mine),
            len(jobs),
            len(mine) - len(todo),
        )
    elif len(todo) < len(jobs):
        log.info("resuming: %d of %d chunks already done", len(jobs) - len(todo), len(jobs))
    for split, _ in cfg.splits():
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        for folder in (out / split, out / split / "images"):  # temporary files of a killed run
            for tmp in folder.glob(".*.tmp"):
                if tmp.is_dir():  # the Blender back-end's work folder
                    shutil.rmtree(tmp, ignore_errors=True)
                else:
                    tmp.unlink(missing_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    workers = cfg.workers or cores
    if cfg.renderer == "blender":  # one Blender on all cores unless --workers says otherwise
        workers = cfg.workers or 1
        share = max(1, cores // min(workers, max(1, len(todo))))
        todo = [replace(j, threads=share) for j in todo]
    total = sum(j.stop - j.start for j in todo)
    with progress_bar(None, progress and total > 0, total=total, unit="img", desc="generate") as bar:

        def done(job: ChunkJob, res: dict) -> None:
            res["fingerprint"] = cfg.fingerprint()
            atomic_write_json(_part_path(cfg, job), res)
            results[(job.split, job.chunk)] = res
            bar.update(job.stop - job.start)

        if workers <= 1 or len(todo) <= 1:
            for j in todo:
                done(j, run_chunk(j))
        else:
            with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
                futures = {pool.submit(run_chunk, j): j for j in todo}
                for fut in as_completed(futures):  # save each chunk as soon as it is finished
                    done(futures[fut], fut.result())
    if shard is not None:
        log.info(
            "shard %s done: its chunks are in %s/<split>/.parts/; gather every shard's parts there and run the "
            "same command without --shard to write the dataset",
            cfg.shard,
            out,
        )
        counts: dict[str, dict[str, int]] = {}
        for (split, chunk), part in sorted(results.items()):
            if chunk % shard[1] != shard[0]:
                continue
            c = counts.setdefault(split, {"images": 0, "questions": 0})
            c["images"] += len(part["scenes"])
            c["questions"] += len(part["questions"])
        return counts
    summary: dict[str, dict[str, int]] = {}
    merged: dict[str, tuple[list, list]] = {}
    for split, _ in cfg.splits():
        parts = [results[(j.split, j.chunk)] for j in jobs if j.split == split]
        scenes = [s for p in parts for s in p["scenes"]]
        questions = [q for p in parts for q in p["questions"]]
        for i, q in enumerate(questions):
            q["question_index"] = i
        merged[split] = (scenes, questions)
    train_qs = merged.get("train", next(iter(merged.values())))[1]
    vocab = Vocab.build((q["question"] for q in train_qs), domain.object_concepts + domain.relation_concepts)
    for split, (scenes, questions) in merged.items():
        info = {
            "split": split,
            "version": "1.0",
            "license": LICENSE,
            "generator": f"nscl {__version__}",
            "seed": cfg.seed,
            "fingerprint": cfg.fingerprint(),
        }
        atomic_write_json(out / split / "scenes.json", {"info": info, "scenes": scenes})
        atomic_write_json(out / split / "questions.json", {"info": info, "questions": questions})
        vocab.save(out / split / "vocab.json")
        summary[split] = {"images": len(scenes), "questions": len(questions)}
    for split in merged:  # only once every split's final files are written
        shutil.rmtree(out / split / ".parts", ignore_errors=True)
    return summary
