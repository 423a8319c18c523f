"""``nscl ask``: answer one question about one image with a trained checkpoint, showing every step.

The checkpoint is an NSCL checkpoint whose ``parser`` key holds the semantic parser. Object boxes come from a
scene file (``objects[i].box`` xyxy pixels, or a COCO RLE ``mask``), from a boxes JSON file (a list of
``[x0, y0, x1, y1]``, or ``{"boxes": [...]}``) or from a detector checkpoint (``nscl train-detector``). The image is resized as in training: height ``image_height`` of
the checkpoint's config, width keeping the aspect ratio, boxes scaled alike. The answer is the batched
executor's quantised answer; the step-by-step account comes from :mod:`nscl.inference.trace`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..data import Box, parse_scene
from ..domain import Domain
from ..errors import DataError, NSCLError
from ..io import read_json
from ..language import correct, question_tokens, unknown_thing, unknown_word_message
from ..models.detector import CenterDetector
from ..models.executor import SceneLogits
from ..models.grammar import ParseError
from ..program import Program
from ..run_config import GUIDED_BEAM
from .confidence import parse_logps
from .dataset import load_image
from .detect import detect_images, load_detector
from .execute import decode_answer, run_programs
from .guided import answer_kind, answers_as_asked, asked_kind, guided_parse, uncovered
from .load import Loaded, load
from .trace import TraceObject, TraceStep, trace_program

SHOWN = 5  # objects listed per step in format_trace (all of them in to_json)
UNSURE = 0.5  # a parse less probable than this gets a warning in the trace


@dataclass
class AskResult:
    question: str
    program: str  # readable form, Program.to_str()
    program_nscl: list[dict]  # Program.to_json()
    steps: list[TraceStep]
    answer: str
    confidence: float
    boxes: list[list[float]]  # every object's box, xyxy pixels of the given image
    # execution-guided decoding: 0 = the greedy parse; k = the beam's k-th candidate, taken because the
    # greedy parse's references were ambiguous on this image; -1 = no candidate was unambiguous
    parse_rank: int = 0
    # P(program | question) under the parser (inference/confidence.py)
    parse_confidence: float = 1.0
    # near-miss spellings read as known words: [{"typed": "cilinder", "read_as": "cylinder"}]
    corrections: list[dict[str, str]] = field(default_factory=list)
    # why a beam candidate replaced the greedy parse, when not for its references
    parse_note: str = ""
    # unknown words that only shape the sentence ("currently"), read as <UNK> (language.unknown_thing)
    ignored: list[str] = field(default_factory=list)

    def format_trace(self, shown: int = SHOWN) -> str:
        """A human-readable account: the program, each step with its most likely objects, the answer."""

        def objs(items: Sequence[TraceObject]) -> str:
            top = sorted(items, key=lambda o: -o.prob)
            text = ", ".join(f"#{o.index} {o.prob:.2f}" for o in top[:shown])
            return text + (f", ... ({len(top) - shown} more)" if len(top) > shown else "")

        lines = [f"Question: {self.question}"]
        if self.corrections:
            fixes = ", ".join(f"{c['typed']!r} as {c['read_as']!r}" for c in self.corrections)
            lines.append(f"          (read {fixes})")
        if self.ignored:
            lines.append(
                f"          (not known, read as unknown words: {', '.join(map(repr, self.ignored))})"
            )
        lines.append(f"Program:  {self.program}")
        lines.append(f"          (parse confidence {self.parse_confidence:.2f})")
        if self.parse_confidence < UNSURE:
            lines.append(
                f"          (warning: the parser is unsure of this reading, probability {self.parse_confidence:.2f}; "
                "the phrasing may be new to it)"
            )
        if self.parse_note:
            lines.append(f"          (beam candidate {self.parse_rank}: {self.parse_note})")
        elif self.parse_rank > 0:
            lines.append(
                f"          (beam candidate {self.parse_rank}: the greedy parse referred to no object or "
                "several where the question needs one)"
            )
        elif self.parse_rank < 0:
            lines.append(
                "          (warning: every candidate parse refers ambiguously to this image's objects)"
            )
        lines.append("Objects:")
        for i, b in enumerate(self.boxes):
            lines.append(f"  #{i} box [{', '.join(f'{v:.0f}' for v in b)}]")
        lines.append("Steps:")
        for s in self.steps:
            head = f"  [{s.node}] {s.describe()}"
            parts = []
            for k, inp in enumerate(s.input_objects):
                chosen = max(inp, key=lambda o: o.prob)
                parts.append(f"input {k} is object #{chosen.index} ({objs(inp)})")
            if s.objects is not None:
                parts.append(f"selects {objs(s.objects)}")
            if s.value is not None:
                v = f"-> {s.value}"
                if s.distribution:
                    top = sorted(s.distribution.items(), key=lambda kv: -kv[1])[:shown]
                    v += " (" + ", ".join(f"{c} {p:.2f}" for c, p in top) + ")"
                parts.append(v)
            lines.append(head + (": " + "; ".join(parts) if parts else ""))
        lines.append(f"Answer: {self.answer} (confidence {self.confidence:.2f})")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------- inputs
def read_boxes(
    image_path: str | Path,
    domain: Domain,
    scene_json: str | Path | None = None,
    index: int | None = None,
    boxes_json: str | Path | None = None,
) -> list[Box]:
    """Object boxes in pixels of the given image, from a scene file or a boxes file.

    ``scene_json``: a scenes.json (``{"scenes": [...]}``), a list of scenes or one scene; the scene is the one
    whose ``image_index`` is ``index``, else the only one, else the one whose ``image_filename`` is the
    image's file name."""
    if (scene_json is None) == (boxes_json is None):
        raise NSCLError(
            "give object boxes with exactly one of a scene file (--scene-json), a boxes file (--boxes-json) "
            "or a detector (--detector)"
        )
    if boxes_json is not None:
        data = read_json(boxes_json)
        if isinstance(data, dict):
            data = data.get("boxes")
        if not isinstance(data, list) or not data:
            raise DataError(f"{boxes_json}: expected a non-empty list of [x0, y0, x1, y1] boxes")
        boxes = []
        for i, b in enumerate(data):
            if not (isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)):
                raise DataError(f"{boxes_json}: box {i}: expected [x0, y0, x1, y1] in pixels")
            box = Box(*(float(v) for v in b))
            if not (box.x1 > box.x0 and box.y1 > box.y0):
                raise DataError(f"{boxes_json}: box {i}: empty box {b}")
            boxes.append(box)
        return boxes
    data = read_json(scene_json)  # type: ignore[arg-type]
    scenes = data.get("scenes", data) if isinstance(data, dict) else data
    if isinstance(scenes, dict):
        scenes = [scenes]
    if not isinstance(scenes, list) or not scenes:
        raise DataError(f"{scene_json}: expected a scenes file, a list of scenes or one scene")
    pos = None
    if index is not None:
        found = [k for k, s in enumerate(scenes) if isinstance(s, dict) and s.get("image_index") == index]
        if not found:
            raise DataError(f"{scene_json}: no scene with image_index {index}")
        pos = found[0]
    elif len(scenes) == 1:
        pos = 0
    else:
        name = Path(image_path).name
        found = [k for k, s in enumerate(scenes) if isinstance(s, dict) and s.get("image_filename") == name]
        if len(found) != 1:
            raise DataError(
                f"{scene_json}: {len(scenes)} scenes and none (or several) for image {name!r}; "
                "give --index IMAGE_INDEX"
            )
        pos = found[0]
    scene = parse_scene(scenes[pos], domain, str(scene_json), pos)
    return scene.boxes


def detected_boxes(
    detector: CenterDetector, image_path: str | Path, device: str | torch.device = "cpu"
) -> list[Box]:
    """Object boxes of an image found by a detector (its own score threshold), best first; may be empty."""
    found = detect_images(detector, [image_path], device)[0]["objects_detection"]
    return [Box(*(float(v) for v in d["box"])) for d in found]


def prepare_image(image_path: str | Path, boxes: Sequence[Box], height: int) -> tuple[Tensor, Tensor]:
    """(Tensor[1, 3, H, W] uint8, Tensor[1, N, 4] boxes) resized like training: height ``height``, the
    image's own aspect ratio, boxes scaled by the same factors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as im:
            w0, h0 = im.size
    except FileNotFoundError:
        raise DataError(f"{image_path}: missing image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{image_path}: cannot decode image ({e})") from None
    width = round(w0 * height / h0)
    img = torch.from_numpy(load_image(image_path, height, width).copy()).permute(2, 0, 1).contiguous()[None]
    sx, sy = width / w0, height / h0
    b = torch.tensor([x.as_list() for x in boxes], dtype=torch.float32) * torch.tensor([sx, sy, sx, sy])
    return img, b[None]


# --------------------------------------------------------------------------------------------- ask
@torch.no_grad()
def ask(
    checkpoint_path: str | Path,
    image_path: str | Path,
    question: str,
    scene_json: str | Path | None = None,
    index: int | None = None,
    boxes_json: str | Path | None = None,
    beam_size: int = 1,
    device: str | torch.device = "cpu",
    guided_beam: int = GUIDED_BEAM,
    correct_spelling: bool = True,
    check_kind: bool = True,
    detector: str | Path | None = None,
) -> AskResult:
    """Perceive the image's objects, parse ``question`` and execute the program step by step.

    With ``guided_beam`` > 0 the parse is execution-guided (:func:`nscl.inference.guided.guided_parse`): the greedy
    parse, when its references are ambiguous on this image, is replaced by the first of the beam's
    ``guided_beam`` candidates that asks for the same kind of answer and whose references are unambiguous;
    ``beam_size`` then goes unused. With 0, the parse is a beam of ``beam_size``. With ``correct_spelling``, a
    word the parser does not know that is one typo away from exactly one word it knows is read as that word
    (``nscl.language.correct``), and the result says so. With ``check_kind``, a parse must answer the kind of
    answer the wording asks for (:func:`nscl.language.asked_answer`) and use every concept the question names
    (:func:`nscl.inference.guided.covers`): a beam candidate that does, or a refusal."""
    ck = load(checkpoint_path, device, need_model=True, need_parser=True)
    domain = ck.domain
    if detector is not None:
        if scene_json is not None or boxes_json is not None:
            raise NSCLError(
                "give object boxes with one of --scene-json, --boxes-json or --detector, not several"
            )
        boxes = detected_boxes(load_detector(detector, device), image_path, device)
        if not boxes:
            raise DataError(f"{image_path}: the detector ({detector}) finds no objects in this image")
    else:
        boxes = read_boxes(image_path, domain, scene_json, index, boxes_json)
    scene = perceive(ck, image_path, boxes, device)
    return answer_on_scene(ck, scene, boxes, question, beam_size, guided_beam, correct_spelling, check_kind)


def perceive(
    ck: Loaded, image_path: str | Path, boxes: Sequence[Box], device: str | torch.device = "cpu"
) -> SceneLogits:
    """The model's view of one image (a one-image SceneLogits): resized as in training, boxes alike."""
    assert ck.model is not None
    images, scaled = prepare_image(image_path, boxes, ck.config.image_height)
    mask = torch.ones(1, len(boxes), dtype=torch.bool)
    with torch.no_grad():
        return ck.model.perceive(images.to(device), scaled.to(device), mask.to(device))


@torch.no_grad()
def answer_on_scene(
    ck: Loaded,
    scene: SceneLogits,
    boxes: Sequence[Box],
    question: str,
    beam_size: int = 1,
    guided_beam: int = GUIDED_BEAM,
    correct_spelling: bool = True,
    check_kind: bool = True,
) -> AskResult:
    """:func:`ask` after perception: parse ``question`` (corrections, refusals, execution-guided decoding held
    to the wording) and trace its program on ``scene``, the perceived image whose objects are ``boxes``.
    Raises ParseError with the refusal's one-line message. A server perceives an image once and calls this
    for every question about it."""
    parser, domain = ck.parser, ck.domain
    assert parser is not None
    text, fixes = question, []
    if correct_spelling:
        fixed, fixes = correct(question, parser.known_words)
        text = fixed if fixes else question
    # Unknown words left: one that may name a thing the model has no concept for ("the zebra") is refused;
    # others ("currently") are read as <UNK>, which the parser met in training through word dropout.
    tokens = question_tokens(text)
    ignored = [w for w in tokens if w not in parser.known_words]
    if (w := unknown_thing(tokens, parser.known_words, parser.lexicon.concepts)) is not None:
        raise ParseError(unknown_word_message(question, w, parser.known_words))
    unknown = "unk" if ignored else "error"
    # The wording may say what kind of answer it wants ("what color", "how many", "is there"); a parse that
    # answers something else means the parser does not know the phrasing.
    asked = asked_kind(parser, text) if check_kind else None
    rank, note = 0, ""
    if guided_beam > 0:
        greedy = parser.parse_many([text], 1, unknown)
        if greedy[1][0] is not None:
            raise ParseError(greedy[1][0])
        gp = guided_parse(
            parser,
            [text],
            [0],
            lambda _: scene,
            guided_beam,
            ck.config.parser.min_referent_p,
            greedy=greedy,
            asked=[asked],
            unknown=unknown,
            cover=check_kind,
        )
        program, rank = gp.programs[0], gp.rank[0]
        got = describe_answer(greedy[0][0])  # type: ignore[arg-type]
        if not answers_as_asked(asked, greedy[0][0]):  # type: ignore[arg-type]
            if rank <= 0:  # no candidate answers as asked with unambiguous references
                raise wrong_kind(question, greedy[0][0], asked)  # type: ignore[arg-type]
            note = f"the greedy parse answered a {got} where the question asks for a {describe_asked(asked)}"
        elif check_kind and (left := uncovered(program, tokens, parser.lexicon)):  # type: ignore[arg-type]
            raise ParseError(
                f"cannot answer {question!r}: the parser reads it as {program.to_str()}, which leaves out "  # type: ignore[union-attr]
                f"{', '.join(map(repr, left))}; the parser does not know this phrasing"
            )
    else:
        programs, errors = parser.parse_many([text], beam_size, unknown)
        if errors[0] is not None:
            raise ParseError(errors[0])
        program = programs[0]
        assert program is not None
        if not answers_as_asked(asked, program):
            raise wrong_kind(question, program, asked)
    steps, _, confidence = trace_program(program, scene, domain, boxes, quantize=True)
    # The answer is the batched executor's (as in evaluation); the trace uses the same primitives.
    out, _ = run_programs([program], [0], scene, domain, True)
    answer = decode_answer(out, domain)
    return AskResult(
        question,
        program.to_str(),  # type: ignore[union-attr]
        program.to_json(),  # type: ignore[union-attr]
        steps,
        answer,
        confidence,
        [b.as_list() for b in boxes],
        rank,
        math.exp(parse_logps(parser, [text], [program])[0]),
        [{"typed": c.typed, "read_as": c.read_as} for c in fixes],
        note,
        ignored,
    )


_COMPARISONS = {"count_greater": "'more than'", "count_less": "'fewer than'", "count_equal": "'as many as'"}


def describe_answer(program: Program) -> str:
    """What a program answers, for messages: "count", "color", "yes/no ('more than')"."""
    kind = answer_kind(program)
    op = program.nodes[-1].op
    return f"{kind} ({_COMPARISONS[op]})" if op in _COMPARISONS else kind


def describe_asked(asked: str | None) -> str:
    return f"yes/no ({_COMPARISONS[asked]})" if asked in _COMPARISONS else str(asked)


# A wording the packaged templates use, per kind of answer asked: the refusal's "try" hint.
_KNOWN_WORDING = {
    "count": "How many red cubes are there?",
    "yes/no": "Are there any red cubes?",
    "count_greater": "Are there more red cubes than spheres?",
    "count_less": "Are there fewer red cubes than spheres?",
    "count_equal": "Are there as many red cubes as spheres?",
}


def wrong_kind(question: str, program: Program, asked: str | None) -> ParseError:
    """The refusal for a parse that answers another kind of answer than the wording asks for, with a wording
    of that kind the parser knows."""
    example = _KNOWN_WORDING.get(str(asked), f"What is the {asked} of the red cube?")
    return ParseError(
        f"cannot answer {question!r}: the parser reads it as {program.to_str()}, which answers a "
        f"{describe_answer(program)}, but the question asks for a {describe_asked(asked)}; the parser does not "
        f"know this phrasing (try one like {example!r})"
    )
