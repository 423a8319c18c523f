"""CLEVR-format scenes and questions: typed records, readers and writers.

Layout (the release's): ``<root>/<split>/{images/, scenes.json, questions.json, vocab.json}``.

Object boxes, in pixels of the stored image, xyxy (``x0, y0, x1, y1``, exclusive maximum), come from the first of:

* ``objects[i].box``: our explicit per-object box field, ``[x0, y0, x1, y1]`` (written by ``nscl generate``);
* ``objects[i].mask``: a COCO RLE mask (``{"size": [H, W], "counts": ...}``), boxed with pycocotools;
* ``objects_detection``: detector output, a list of ``{"mask": RLE, "score": s}`` (or ``"box"``), kept when
  ``score >= detection_threshold``; these objects carry no attributes.

Real CLEVR v1.0 scenes have none of these; they can still be executed symbolically, but not used for training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .domain import Domain
from .errors import DataError, NSCLError
from .io import atomic_write_json, read_json
from .program import ClevrProgram

BOX_SOURCES = ("auto", "box", "mask", "detection", "none")


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels, xyxy with exclusive maximum."""

    x0: float
    y0: float
    x1: float
    y1: float

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]


@dataclass
class SceneObject:
    attributes: dict[str, str]  # attribute name -> concept; empty for detections
    box: Box | None = None
    mask: dict | None = None  # COCO RLE
    extra: dict = field(
        default_factory=dict
    )  # every other stored key (3d_coords, pixel_coords, rotation, ...)


@dataclass
class Scene:
    image_index: int
    image_filename: str
    objects: list[SceneObject]
    relations: dict[str, list[list[int]]]  # relation concept -> for each i, the sorted j with r(j, i)
    extra: dict = field(default_factory=dict)

    @property
    def boxes(self) -> list[Box]:
        out = []
        for i, o in enumerate(self.objects):
            if o.box is None:
                raise DataError(f"scene {self.image_index} ({self.image_filename}): object {i}: no box")
            out.append(o.box)
        return out


@dataclass
class Question:
    index: int  # position in the questions file
    image_index: int
    question: str
    answer: str | None  # normalised ("yes", "3", "red"); None for unanswered test questions
    program: ClevrProgram | None
    image_filename: str | None = None
    family: int | None = None  # question_family_index
    template_filename: str | None = None
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- parsing
def _rle_box(rle: Mapping) -> Box:
    from pycocotools import mask as mask_utils

    r = dict(rle)
    if isinstance(r.get("counts"), str):
        r["counts"] = r["counts"].encode("ascii")
    x, y, w, h = (float(v) for v in mask_utils.toBbox(r))
    return Box(x, y, x + w, y + h)


def _parse_box(value: Any, where: str) -> Box:
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, (int, float)) for v in value)):
        raise DataError(f"{where}: 'box' must be [x0, y0, x1, y1]")
    b = Box(*(float(v) for v in value))
    if not (b.x1 > b.x0 and b.y1 > b.y0):
        raise DataError(f"{where}: empty box {value}")
    return b


def parse_scene(
    d: Any,
    domain: Domain,
    source: str = "scenes.json",
    position: int = 0,
    box_source: str = "auto",
    detection_threshold: float = 0.5,
) -> Scene:
    """Parse one scene record; errors name the file, the scene and the problem."""
    w = f"{source}: scene {position}"
    if not isinstance(d, Mapping):
        raise DataError(f"{w}: a scene must be an object")
    for key in ("image_index", "objects"):
        if key not in d:
            raise DataError(f"{w}: missing required key {key!r}")
    if not isinstance(d["image_index"], int) or isinstance(d["image_index"], bool):
        raise DataError(f"{w}: 'image_index' must be an integer")
    w = f"{source}: scene {position} (image_index {d['image_index']})"
    objs_raw = d["objects"]
    if not isinstance(objs_raw, list):
        raise DataError(f"{w}: 'objects' must be a list")
    objects: list[SceneObject] = []
    for i, o in enumerate(objs_raw):
        if not isinstance(o, Mapping):
            raise DataError(f"{w}: object {i}: must be an object")
        attrs: dict[str, str] = {}
        for a in domain.attributes:
            if a.name not in o:
                raise DataError(f"{w}: object {i}: missing required key {a.name!r}")
            if o[a.name] not in a.concepts:
                raise DataError(f"{w}: object {i}: unknown {a.name} {o[a.name]!r}")
            attrs[a.name] = o[a.name]
        box = None
        if box_source in ("auto", "box") and "box" in o:
            box = _parse_box(o["box"], f"{w}: object {i}")
        elif box_source in ("auto", "mask") and "mask" in o:
            try:
                box = _rle_box(o["mask"])
            except (TypeError, ValueError, KeyError) as e:
                raise DataError(f"{w}: object {i}: malformed RLE mask ({e})") from None
        extra = {k: v for k, v in o.items() if k not in attrs and k not in ("box",)}
        objects.append(SceneObject(attrs, box, o.get("mask"), extra))
    # Detections carry neither attributes nor relations.
    detected = box_source == "detection" or (
        box_source == "auto" and bool(d.get("objects_detection")) and not objs_raw
    )
    if detected:
        objects = []
        dets = d.get("objects_detection") or []
        if not isinstance(dets, list):
            raise DataError(f"{w}: 'objects_detection' must be a list")
        for i, det in enumerate(dets):
            if not isinstance(det, Mapping):
                raise DataError(f"{w}: detection {i}: must be an object")
            score = det.get("score", 1.0)
            if not isinstance(score, (int, float)) or isinstance(score, bool):
                raise DataError(f"{w}: detection {i}: 'score' must be a number")
            if score < detection_threshold:
                continue
            if "box" in det:
                box = _parse_box(det["box"], f"{w}: detection {i}")
            elif "mask" in det:
                try:
                    box = _rle_box(det["mask"])
                except (TypeError, ValueError, KeyError) as e:
                    raise DataError(f"{w}: detection {i}: malformed RLE mask ({e})") from None
            else:
                raise DataError(f"{w}: detection {i}: needs 'mask' or 'box'")
            objects.append(SceneObject({}, box, det.get("mask"), {"score": det.get("score")}))
    if not objects:
        raise DataError(f"{w}: empty scene (no objects)")
    n = len(objects)
    rel_raw = d.get(domain.relation_field, {})
    relations: dict[str, list[list[int]]] = {}
    if not detected:
        if not isinstance(rel_raw, Mapping):
            raise DataError(f"{w}: {domain.relation_field} must be an object")
        for r in domain.relation_concepts:
            if r not in rel_raw:
                raise DataError(f"{w}: {domain.relation_field} is missing {r!r}")
            rows = rel_raw[r]
            if not isinstance(rows, list) or len(rows) != n:
                raise DataError(f"{w}: {domain.relation_field}[{r!r}] must have one list per object ({n})")
            for i, row in enumerate(rows):
                if not isinstance(row, list) or any(
                    not isinstance(j, int) or not 0 <= j < n or j == i for j in row
                ):
                    raise DataError(f"{w}: {domain.relation_field}[{r!r}][{i}] has an invalid object index")
            relations[r] = [sorted(row) for row in rows]
    extra = {
        k: v
        for k, v in d.items()
        if k not in ("image_index", "image_filename", "objects", domain.relation_field)
    }
    return Scene(int(d["image_index"]), str(d.get("image_filename", "")), objects, relations, extra)


def scene_to_dict(s: Scene, domain: Domain) -> dict:
    objs = []
    for o in s.objects:
        od: dict = dict(o.attributes)
        od.update(o.extra)
        if o.box is not None:
            od["box"] = o.box.as_list()
        objs.append(od)
    d: dict = {"image_index": s.image_index, "image_filename": s.image_filename, "objects": objs}
    d[domain.relation_field] = s.relations
    d.update(s.extra)
    return d


def parse_question(
    d: Any, domain: Domain, source: str = "questions.json", position: int = 0, programs: bool = True
) -> Question:
    """One question record; ``programs=False`` never looks at its ``program`` (learning from answers alone)."""
    w = f"{source}: question {position}"
    if not isinstance(d, Mapping):
        raise DataError(f"{w}: a question must be an object")
    for key in ("image_index", "question"):
        if key not in d:
            raise DataError(f"{w}: missing required key {key!r}")
    if not isinstance(d["image_index"], int):
        raise DataError(f"{w}: 'image_index' must be an integer")
    answer = None
    if "answer" in d:
        try:
            answer = domain.normalize_answer(d["answer"])
            domain.answer_type(answer)
        except ValueError as e:
            raise DataError(f"{w}: {e}") from None
    program = None
    if programs and "program" in d:
        try:
            program = ClevrProgram.from_json(d["program"], where="program")
            program.validate(domain, where="program")
        except NSCLError as e:
            raise DataError(f"{w}: {e}") from None
    known = {
        "image_index",
        "question",
        "answer",
        "program",
        "image_filename",
        "question_family_index",
        "template_filename",
    }
    return Question(
        index=position,
        image_index=d["image_index"],
        question=str(d["question"]),
        answer=answer,
        program=program,
        image_filename=d.get("image_filename"),
        family=d.get("question_family_index"),
        template_filename=d.get("template_filename"),
        extra={k: v for k, v in d.items() if k not in known},
    )


def question_to_dict(q: Question) -> dict:
    d: dict = {"image_index": q.image_index}
    if q.image_filename is not None:
        d["image_filename"] = q.image_filename
    d["question"] = q.question
    if q.answer is not None:
        d["answer"] = q.answer
    if q.program is not None:
        d["program"] = q.program.to_json()
    if q.family is not None:
        d["question_family_index"] = q.family
    if q.template_filename is not None:
        d["template_filename"] = q.template_filename
    d.update(q.extra)
    return d


# --------------------------------------------------------------------------------------------- files
def _records(path: Path, key: str) -> tuple[list, dict]:
    data = read_json(path)
    if not isinstance(data, Mapping) or key not in data:
        raise DataError(f"{path}: missing required key {key!r} at the top level")
    if not isinstance(data[key], list):
        raise DataError(f"{path}: {key!r} must be a list")
    info = data.get("info", {})
    if not isinstance(info, Mapping):
        raise DataError(f"{path}: 'info' must be an object")
    return data[key], dict(info)


def read_scenes(
    path: str | Path, domain: Domain, box_source: str = "auto", detection_threshold: float | None = None
) -> list[Scene]:
    """Scenes of a CLEVR scenes file. Detections (``objects_detection``) scoring below ``detection_threshold``
    are dropped; None: the file's ``info.detection_threshold`` (``nscl detect`` writes its detector's), else
    0.5 (the release's)."""
    if box_source not in BOX_SOURCES:
        raise DataError(f"box source {box_source!r} is not one of {', '.join(BOX_SOURCES)}")
    p = Path(path)
    records, info = _records(p, "scenes")
    if detection_threshold is None:
        detection_threshold = info.get("detection_threshold", 0.5)
        if not isinstance(detection_threshold, (int, float)) or isinstance(detection_threshold, bool):
            raise DataError(f"{p}: 'info.detection_threshold' must be a number")
    scenes = [
        parse_scene(d, domain, str(p), i, box_source, detection_threshold) for i, d in enumerate(records)
    ]
    seen: set[int] = set()
    for i, s in enumerate(scenes):
        if s.image_index in seen:
            raise DataError(f"{p}: scene {i}: duplicate image_index {s.image_index}")
        seen.add(s.image_index)
    return scenes


def read_questions(path: str | Path, domain: Domain, programs: bool = True) -> list[Question]:
    p = Path(path)
    records, _ = _records(p, "questions")
    return [parse_question(d, domain, str(p), i, programs) for i, d in enumerate(records)]


def write_scenes(path: str | Path, scenes: Sequence[Scene], domain: Domain, info: dict | None = None) -> None:
    atomic_write_json(path, {"info": info or {}, "scenes": [scene_to_dict(s, domain) for s in scenes]})


def write_questions(path: str | Path, questions: Sequence[Question], info: dict | None = None) -> None:
    atomic_write_json(path, {"info": info or {}, "questions": [question_to_dict(q) for q in questions]})


@dataclass
class SplitPaths:
    """Where one split's files are: the release layout by default, each file overridable."""

    scenes: Path
    questions: Path
    images: Path
    vocab: Path

    @classmethod
    def resolve(
        cls,
        data_dir: str | Path | None = None,
        scenes_json: str | Path | None = None,
        questions_json: str | Path | None = None,
        image_root: str | Path | None = None,
        vocab_json: str | Path | None = None,
    ) -> SplitPaths:
        if data_dir is None and (scenes_json is None or questions_json is None):
            raise DataError("give --data-dir, or both --data-scenes-json and --data-questions-json")
        root = Path(data_dir) if data_dir is not None else Path(scenes_json).parent  # type: ignore[arg-type]
        if data_dir is not None and not root.is_dir():
            raise DataError(f"{root}: no such data directory")
        return cls(
            scenes=Path(scenes_json) if scenes_json else root / "scenes.json",
            questions=Path(questions_json) if questions_json else root / "questions.json",
            images=Path(image_root) if image_root else root / "images",
            vocab=Path(vocab_json) if vocab_json else root / "vocab.json",
        )


@dataclass
class Split:
    """One split in memory: scenes by image index, and questions checked against them."""

    paths: SplitPaths
    scenes: dict[int, Scene]
    questions: Sequence[Question]  # a list, or a QuestionTable (nscl.question_table)

    def check_images(self) -> None:
        """Every scene's image file must exist (needed for training, not for symbolic execution)."""
        for s in self.scenes.values():
            p = self.paths.images / s.image_filename
            if not s.image_filename or not p.is_file():
                raise DataError(
                    f"{self.paths.scenes}: scene image_index {s.image_index}: missing image file {p}"
                )


def load_split(
    paths: SplitPaths,
    domain: Domain,
    box_source: str = "auto",
    detection_threshold: float | None = None,
    programs: bool = True,
) -> Split:
    """Scenes and questions of one split; ``programs=False`` reads no question's program."""
    scenes = {s.image_index: s for s in read_scenes(paths.scenes, domain, box_source, detection_threshold)}
    questions = read_questions(paths.questions, domain, programs)
    for q in questions:
        if q.image_index not in scenes:
            raise DataError(
                f"{paths.questions}: question {q.index}: image_index {q.image_index} has no scene in {paths.scenes}"
            )
    return Split(paths, scenes, questions)
