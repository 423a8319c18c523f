"""What the web server holds: one checkpoint loaded once, the split's images by index, uploads by id, and the
per-question function.

A :class:`Session` is built once by :func:`open_session` and shared by every request. Its model, parser,
domain and split are read-only after start-up; its two caches (perceived scenes per image, uploads) are
guarded by one lock, which also serialises inference (one question at a time: torch already uses every core).

The per-question path is :func:`nscl.inference.ask.ask` without the loading: :func:`nscl.inference.ask.perceive`
once per image and :func:`nscl.inference.ask.answer_on_scene` (spelling, refusals, guided parsing, the
trace). Clients name images only by dataset index (``int``) or by the server-made id of an upload
(16 hex digits); no client string ever reaches the filesystem.
"""

from __future__ import annotations

import io
import math
import secrets
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import Box, Question, Scene, SplitPaths, read_questions, read_scenes
from ..errors import DataError, NSCLError
from ..inference.ask import answer_on_scene, detected_boxes, perceive
from ..inference.load import Loaded, load
from ..language import question_tokens
from ..models.executor import SceneLogits
from ..models.grammar import ParseError
from ..run_config import GUIDED_BEAM

UPLOAD_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}  # content type -> the format PIL must find
EXAMPLES = (
    "How many things are there?",
    "How many red things are there?",
    "Is there a blue sphere?",
    "What color is the large cylinder?",
    "What shape is the small metal thing?",
    "Are there more cubes than spheres?",
)


class ServeError(NSCLError):
    """A request the server refuses, with the HTTP status to answer (4xx) and a one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server."""

    upload_bytes: int = 10 * 1024 * 1024  # an upload's body
    image_pixels: int = 4096 * 4096  # an uploaded image's width * height
    question_chars: int = 300
    uploads: int = 32  # uploads kept (the oldest is dropped)
    cached_scenes: int = 64  # perceived images kept
    waiting: int = 8  # questions queued behind the one running before 503 "busy"


@dataclass(frozen=True)
class AskSettings:
    """How questions are parsed (``nscl ask``'s flags)."""

    guided_beam: int = GUIDED_BEAM
    beam_size: int = 1
    correct_spelling: bool = True
    check_kind: bool = True


@dataclass(frozen=True)
class Upload:
    """An uploaded image, re-encoded as PNG under the session's own folder; boxes from the detector."""

    id: str
    path: Path
    width: int
    height: int
    boxes: list[Box]


@dataclass
class Session:
    """The model and the images, loaded once; see the module docstring. Build with :func:`open_session`."""

    loaded: Loaded
    device: torch.device
    scenes: dict[int, Scene]  # image_index -> scene (boxes and ground truth), in the split's order
    image_root: Path | None
    questions: dict[int, list[Question]]  # image_index -> the split's questions about it
    detector: Any | None  # nscl.models.detector.CenterDetector
    detector_name: str | None
    limits: Limits = field(default_factory=Limits)
    settings: AskSettings = field(default_factory=AskSettings)
    _tmp: tempfile.TemporaryDirectory = field(default_factory=tempfile.TemporaryDirectory, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _uploads: OrderedDict[str, Upload] = field(default_factory=OrderedDict, repr=False)
    _perceived: OrderedDict[tuple[str, Any], SceneLogits] = field(default_factory=OrderedDict, repr=False)
    _order: list[int] = field(init=False, repr=False)  # the gallery's order: the split's

    def __post_init__(self) -> None:
        self._order = list(self.scenes)

    # ----------------------------------------------------------------------------------------- images
    def info(self) -> dict[str, Any]:
        """``{"checkpoint", "images", "detector", "uploads", "limits": {...}, "examples": [str]}``."""
        return {
            "checkpoint": Path(self.loaded.source).name,
            "images": len(self._order),
            "detector": self.detector_name,
            "uploads": self.detector is not None,
            "limits": {
                "upload_bytes": self.limits.upload_bytes,
                "image_pixels": self.limits.image_pixels,
                "question_chars": self.limits.question_chars,
            },
            "examples": [q for q in EXAMPLES if self._known(q)],
        }

    def gallery(self, page: int, per_page: int) -> dict[str, Any]:
        """One page of the split's images: ``{"total", "page", "pages", "per_page", "items": [{"index",
        "filename", "objects", "url"}]}``; pages count from 0."""
        total = len(self._order)
        pages = max(1, math.ceil(total / per_page))
        if page >= pages:
            raise ServeError(404, f"page {page} is past the last page ({pages - 1})")
        items = []
        for idx in self._order[page * per_page : (page + 1) * per_page]:
            s = self.scenes[idx]
            items.append(
                {"index": idx, "filename": s.image_filename, "objects": len(s.objects), "url": image_url(idx)}
            )
        return {"total": total, "page": page, "pages": pages, "per_page": per_page, "items": items}

    def scene(self, index: int) -> Scene:
        if index not in self.scenes or self.image_root is None:
            raise ServeError(404, f"no image with index {index} in this split")
        return self.scenes[index]

    def image_file(self, index: int) -> Path:
        """The file of dataset image ``index`` (its name comes from the split's scenes file)."""
        path = self.image_root / self.scene(index).image_filename  # type: ignore[operator]
        if not path.is_file():
            raise ServeError(404, f"image {index}: its file is missing on the server")
        return path

    def upload_file(self, upload_id: str) -> Path:
        with self._lock:
            up = self._uploads.get(upload_id)
        if up is None:
            raise ServeError(404, "no such upload (uploads are kept for a while only; upload it again)")
        return up.path

    def image_details(self, index: int) -> dict[str, Any]:
        """``{"index", "filename", "url", "width", "height", "objects": [{"index", "box": [x0, y0, x1, y1],
        "attributes": {name: concept}}], "questions": [{"question", "answer"}]}`` (boxes in image pixels)."""
        from PIL import Image

        s = self.scene(index)
        with Image.open(self.image_file(index)) as im:
            width, height = im.size
        objects = [
            {"index": i, "box": o.box.as_list() if o.box else None, "attributes": dict(o.attributes)}
            for i, o in enumerate(s.objects)
        ]
        qs = [{"question": q.question, "answer": q.answer} for q in self.questions.get(index, [])[:8]]
        return {
            "index": index,
            "filename": s.image_filename,
            "url": image_url(index),
            "width": width,
            "height": height,
            "objects": objects,
            "questions": [q for q in qs if self._known(q["question"])][:5],
        }

    # ----------------------------------------------------------------------------------------- uploads
    def require_detector(self) -> None:
        if self.detector is None:
            raise ServeError(
                409, "uploads need a detector to find their objects: start nscl serve with --detector DET"
            )

    def add_upload(self, data: bytes, content_type: str) -> dict[str, Any]:
        """Check, decode, store and detect an uploaded PNG/JPEG: ``{"id", "url", "width", "height",
        "objects": [{"index", "box"}]}``. ServeError 409 without a detector, 415 for another content type or
        format, 413 past the limits, 400 when it cannot be decoded, 422 when the detector finds nothing."""
        self.require_detector()
        image = decode_upload(data, content_type, self.limits)
        uid = secrets.token_hex(8)
        path = Path(self._tmp.name) / f"upload-{uid}.png"
        image.save(path, format="PNG")
        with self._lock, torch.no_grad():
            boxes = detected_boxes(self.detector, path, self.device)
            boxes = [b for b in boxes if b.x1 - b.x0 >= 1 and b.y1 - b.y0 >= 1]
            if not boxes:
                path.unlink(missing_ok=True)
                raise ServeError(422, "the detector finds no objects in this image")
            self._uploads[uid] = Upload(uid, path, image.width, image.height, boxes)
            while len(self._uploads) > self.limits.uploads:
                _, old = self._uploads.popitem(last=False)
                old.path.unlink(missing_ok=True)
                self._perceived.pop(("upload", old.id), None)
        return {
            "id": uid,
            "url": upload_url(uid),
            "width": image.width,
            "height": image.height,
            "objects": [{"index": i, "box": b.as_list()} for i, b in enumerate(boxes)],
        }

    # ----------------------------------------------------------------------------------------- questions
    def ask(self, question: str, index: int | None = None, upload: str | None = None) -> dict[str, Any]:
        """Answer ``question`` about dataset image ``index`` or upload ``upload``: ``{"question", "image":
        {"index"} | {"upload"}, "refusal": str | None, "result": AskResult.to_json() | None, "expected": the
        split's answer to this very question or None, "seconds"}``. A parser refusal is a result, not an
        error."""
        start = time.perf_counter()
        if (index is None) == (upload is None):
            raise ServeError(400, "give exactly one of 'image' (a dataset index) or 'upload' (an upload id)")
        with self._lock, torch.no_grad():
            if index is not None:
                key: tuple[str, Any] = ("dataset", index)
                path, boxes = self.image_file(index), self.scene(index).boxes
            else:
                up = self._uploads.get(upload)  # type: ignore[arg-type]
                if up is None:
                    raise ServeError(
                        404, "no such upload (uploads are kept for a while only; upload it again)"
                    )
                key, path, boxes = ("upload", upload), up.path, up.boxes
            scene = self._perceived.get(key)
            if scene is None:
                scene = perceive(self.loaded, path, boxes, self.device)
                self._perceived[key] = scene
                while len(self._perceived) > self.limits.cached_scenes:
                    self._perceived.popitem(last=False)
            self._perceived.move_to_end(key)
            refusal, result = None, None
            try:
                result = answer_on_scene(
                    self.loaded,
                    scene,
                    boxes,
                    question,
                    self.settings.beam_size,
                    self.settings.guided_beam,
                    self.settings.correct_spelling,
                    self.settings.check_kind,
                ).to_json()
            except ParseError as e:
                refusal = str(e)
        return {
            "question": question,
            "image": {"index": index} if index is not None else {"upload": upload},
            "refusal": refusal,
            "result": result,
            "expected": self.expected_answer(index, question) if index is not None else None,
            "seconds": round(time.perf_counter() - start, 4),
        }

    def expected_answer(self, index: int, question: str) -> str | None:
        """The split's answer to ``question`` about image ``index`` (same tokens), or None."""
        want = " ".join(question_tokens(question))
        for q in self.questions.get(index, []):
            if q.answer is not None and " ".join(question_tokens(q.question)) == want:
                return q.answer
        return None

    def _known(self, question: str) -> bool:
        parser = self.loaded.parser
        return parser is not None and all(w in parser.known_words for w in question_tokens(question))

    def close(self) -> None:
        """Remove the uploads' folder."""
        self._tmp.cleanup()


def image_url(index: int) -> str:
    return f"/api/images/{index}/image"


def upload_url(uid: str) -> str:
    return f"/api/uploads/{uid}/image"


# --------------------------------------------------------------------------------------------- opening
def open_session(
    checkpoint: str | Path,
    data_dir: str | Path | None = None,
    detector: str | Path | None = None,
    device: str | torch.device = "cpu",
    limits: Limits | None = None,
    settings: AskSettings | None = None,
) -> Session:
    """Load the checkpoint (model and parser), the split's scenes and questions, and the detector, once."""
    if data_dir is None and detector is None:
        raise NSCLError("give --data-dir SPLIT (images with boxes) or --detector DET (for uploads), or both")
    dev = torch.device(device)
    ck = load(checkpoint, dev, need_model=True, need_parser=True)
    scenes: dict[int, Scene] = {}
    questions: dict[int, list[Question]] = {}
    image_root = None
    if data_dir is not None:
        paths = SplitPaths.resolve(data_dir)
        if not paths.scenes.is_file():
            raise DataError(f"{data_dir}: no scenes.json (the page needs the objects' boxes)")
        scenes = {s.image_index: s for s in read_scenes(paths.scenes, ck.domain)}
        if paths.questions.is_file():
            for q in read_questions(paths.questions, ck.domain):
                questions.setdefault(q.image_index, []).append(q)
        image_root = paths.images
    det = None
    if detector is not None:
        from ..inference.detect import load_detector

        det = load_detector(detector, dev)
    return Session(
        ck,
        dev,
        scenes,
        image_root,
        questions,
        det,
        Path(detector).name if detector is not None else None,
        limits or Limits(),
        settings or AskSettings(),
    )


# --------------------------------------------------------------------------------------------- uploads
def decode_upload(data: bytes, content_type: str, limits: Limits):  # -> PIL.Image.Image (RGB)
    """The uploaded bytes as an RGB image, after the content-type, size, format, pixel-count and decoding
    checks (ServeError 415, 413 or 400)."""
    from PIL import Image, UnidentifiedImageError

    kind = content_type.split(";")[0].strip().lower()
    if kind not in UPLOAD_TYPES:
        raise ServeError(
            415, f"uploads must be PNG or JPEG images (image/png, image/jpeg), not {kind or 'untyped'}"
        )
    if len(data) > limits.upload_bytes:
        raise ServeError(
            413,
            f"the upload is {len(data) / 2**20:.1f} MB; the limit is {limits.upload_bytes / 2**20:.0f} MB",
        )
    if not data:
        raise ServeError(400, "the upload is empty")
    try:
        im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ServeError(413, f"the image has more than {limits.image_pixels} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise ServeError(415, f"the upload is not a decodable {UPLOAD_TYPES[kind]} image") from None
    if im.format != UPLOAD_TYPES[kind]:
        raise ServeError(415, f"the upload says {kind} but holds {im.format or 'something else'}")
    w, h = im.size
    if w * h > limits.image_pixels:
        raise ServeError(413, f"the image is {w}x{h} pixels; the limit is {limits.image_pixels} pixels")
    if min(w, h) < 8:
        raise ServeError(400, f"the image is {w}x{h} pixels; it needs at least 8 on each side")
    try:
        return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:
        raise ServeError(400, f"cannot decode the image ({str(e).splitlines()[0][:100]})") from None


# --------------------------------------------------------------------------------------------- inference
