"""Model-ready data: images decoded once, questions compiled once, batches grouped by image; the train/dev
split by image that training and evaluation share.

The questions of one image share one perception pass: a batch is a set of images and their (curriculum-
eligible) questions. Per-question curriculum keys (object count, raw program length) are precomputed, so a new
stage is an array comparison, not a rescan of the dataset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..data import Split
from ..domain import Domain
from ..errors import DataError, NSCLError
from ..models.executor import AnswerKinds, CompiledProgram, Compiler, ProgramBatch
from ..program import clevr_answer_op, translate
from ..progress import progress_bar
from ..question_table import QuestionTable

log = logging.getLogger(__name__)


@dataclass
class Batch:
    images: Tensor  # (B, 3, H, W) uint8
    boxes: Tensor  # (B, N, 4) float, pixels of the resized images
    mask: Tensor  # (B, N) bool
    programs: ProgramBatch
    kind: Tensor  # (Q,) answer kinds
    value: Tensor  # (Q,) answer values
    question_ids: Tensor  # (Q,) index into the dataset's questions
    image_ids: Tensor  # (B,) index into the dataset's images

    def pin_memory(self) -> Batch:
        """Page-locked copies of the image tensors (DataLoader(pin_memory=True) calls this), for faster copies
        to a GPU; the programs stay as they are."""
        return Batch(
            self.images.pin_memory(),
            self.boxes.pin_memory(),
            self.mask.pin_memory(),
            self.programs,
            self.kind,
            self.value,
            self.question_ids,
            self.image_ids,
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.images.to(device),
            self.boxes.to(device),
            self.mask.to(device),
            self.programs.to(device),
            self.kind.to(device),
            self.value.to(device),
            self.question_ids,
            self.image_ids,
        )


def load_image(path, height: int, width: int) -> np.ndarray:  # noqa: ANN001
    """(H, W, 3) uint8, resized with antialiasing."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (width, height):
                im = im.resize((width, height), Image.BILINEAR, reducing_gap=None)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: missing image file") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: cannot decode image ({e})") from None


class QADataset:
    """All images of a split at one resolution, their boxes, and every answerable question compiled.

    ``lazy_images``: images are decoded when a batch asks for them instead of all at once (a CLEVR-size split
    does not fit in memory decoded: 70,000 images at 320x480 are 32 GB); batches are then best assembled in
    DataLoader workers (``TrainConfig.loader_workers``).

    A split whose questions are a :class:`~nscl.question_table.QuestionTable` (``load_split_compact``) keeps them
    as columns: each distinct program is parsed and compiled the first time a batch needs it and kept in a cache
    of at most ``CACHE_PROGRAMS`` programs."""

    CACHE_PROGRAMS = 200_000

    def __init__(
        self,
        split: Split,
        domain: Domain,
        image_height: int,
        progress: bool = False,
        lazy_images: bool = False,
    ) -> None:
        self.domain = domain
        self.kinds = AnswerKinds(domain)
        scenes = sorted(split.scenes.values(), key=lambda s: s.image_index)
        self.scenes = scenes
        self.image_of_index = {s.image_index: i for i, s in enumerate(scenes)}
        # Resolution: keep the aspect ratio of the first image, short side = image_height. Every image is
        # resized to that size and its boxes scaled by its own factors.
        from PIL import Image

        def size_of(s) -> tuple[int, int]:  # noqa: ANN001
            path = split.paths.images / s.image_filename
            try:
                with Image.open(path) as im:
                    return im.size
            except FileNotFoundError:
                raise DataError(
                    f"{split.paths.scenes}: scene image_index {s.image_index}: missing image file {path}"
                ) from None

        w0, h0 = size_of(scenes[0])
        self.height = image_height
        self.width = round(w0 * image_height / h0)
        self.image_paths = [split.paths.images / s.image_filename for s in scenes]
        self.lazy_images = lazy_images
        imgs = np.empty((0 if lazy_images else len(scenes), self.height, self.width, 3), dtype=np.uint8)
        self.boxes: list[Tensor] = []
        desc = "read image sizes" if lazy_images else "decode images"
        for i, s in enumerate(progress_bar(scenes, progress, desc=desc, unit="img")):
            w, h = size_of(s) if i else (w0, h0)
            if not lazy_images:
                imgs[i] = load_image(self.image_paths[i], self.height, self.width)
            b = torch.tensor([o.as_list() for o in s.boxes], dtype=torch.float32)
            self.boxes.append(
                b * torch.tensor([self.width / w, self.height / h, self.width / w, self.height / h])
            )
        # (I, 3, H, W) uint8; no rows with lazy_images
        self.images = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
        self.n_objects = np.array([len(s.objects) for s in scenes])
        # Questions
        self._compiler = Compiler(domain)
        self._table: QuestionTable | None = None
        if isinstance(split.questions, QuestionTable):
            self._questions_from_table(split)
        else:
            self._questions_from_list(split)

    def _questions_from_list(self, split: Split) -> None:
        """Every question parsed and compiled up front."""
        domain = self.domain
        self.programs: list[CompiledProgram] = []
        q_img, q_len, q_kind, q_val, q_index, self.qtypes = [], [], [], [], [], []
        skipped = 0
        for q in split.questions:
            if q.program is None or q.answer is None:
                skipped += 1
                continue
            try:
                prog = translate(q.program, domain)
            except NSCLError as e:
                raise DataError(
                    f"{split.paths.questions}: question {q.index}: the model cannot answer it: {e}"
                ) from None
            kind, value = self.kinds.of_answer(domain, q.answer)
            self.programs.append(self._compiler(prog))
            q_img.append(self.image_of_index[q.image_index])
            q_len.append(len(q.program))
            q_kind.append(kind)
            q_val.append(value)
            q_index.append(q.index)
            self.qtypes.append(clevr_answer_op(q.program))
        if skipped:
            log.info("skipped %d question(s) without program or answer", skipped)
        self.q_image = np.array(q_img, dtype=np.int64)
        self.q_length = np.array(q_len, dtype=np.int64)
        self.q_kind = torch.tensor(q_kind, dtype=torch.long)
        self.q_value = torch.tensor(q_val, dtype=torch.long)
        self.q_index = np.array(q_index, dtype=np.int64)  # position in questions.json

    def _questions_from_table(self, split: Split) -> None:
        """Columns only: a question's program is parsed and compiled when a batch needs it (:meth:`compiled`)."""
        t = split.questions
        assert isinstance(t, QuestionTable)
        keep = np.flatnonzero((t.program_id >= 0) & (t.answer_code >= 0))
        if len(keep) < len(t):
            log.info("skipped %d question(s) without program or answer", len(t) - len(keep))
        index_sorted = np.array([s.image_index for s in self.scenes], dtype=np.int64)  # ascending
        self.q_image = np.searchsorted(index_sorted, t.image_index[keep])
        self._q_program = t.program_id[keep]
        self.q_length = t.program_length[self._q_program]
        kv = np.array([self.kinds.of_answer(self.domain, a) for a in t.answers], dtype=np.int64).reshape(
            -1, 2
        )
        codes = t.answer_code[keep]
        self.q_kind = torch.from_numpy(kv[codes, 0].copy())
        self.q_value = torch.from_numpy(kv[codes, 1].copy())
        self.q_index = keep.astype(np.int64)
        self.qtypes = [t.program_type[i] for i in self._q_program.tolist()]
        self._table = t
        self._cache: dict[int, CompiledProgram] = {}

    def compiled(self, i: int) -> CompiledProgram:
        """The compiled program of dataset question ``i``."""
        if self._table is None:
            return self.programs[i]
        pid = int(self._q_program[i])
        prog = self._cache.get(pid)
        if prog is None:
            raw = self._table.program(pid)
            try:
                prog = self._compiler(translate(raw, self.domain))
            except NSCLError as e:
                raise DataError(
                    f"{self._table.source}: question {int(self.q_index[i])}: the model cannot answer it: {e}"
                ) from None
            if len(self._cache) >= self.CACHE_PROGRAMS:
                self._cache.clear()
            self._cache[pid] = prog
        return prog

    def __len__(self) -> int:
        return len(self.q_index)

    def eligible(self, question_ids: np.ndarray, max_objects: int, max_length: int) -> np.ndarray:
        """The subset of ``question_ids`` allowed by a curriculum stage."""
        q = question_ids
        keep = (self.n_objects[self.q_image[q]] <= max_objects) & (self.q_length[q] <= max_length)
        return q[keep]

    def batches(
        self, question_ids: np.ndarray, batch_size: int, rng: np.random.Generator | None
    ) -> Iterator[np.ndarray]:
        """Group questions by image (shuffled when ``rng`` is given) into batches of about ``batch_size``
        questions; an image's questions never straddle two batches."""
        if len(question_ids) == 0:
            return
        order = np.argsort(self.q_image[question_ids], kind="stable")
        q_sorted = question_ids[order]
        imgs, starts = np.unique(self.q_image[q_sorted], return_index=True)
        groups = np.split(q_sorted, starts[1:])
        idx = rng.permutation(len(groups)) if rng is not None else np.arange(len(groups))
        cur: list[np.ndarray] = []
        n = 0
        for g in idx:
            cur.append(rng.permutation(groups[g]) if rng is not None else groups[g])
            n += len(groups[g])
            if n >= batch_size:
                yield np.concatenate(cur)
                cur, n = [], 0
        if cur:
            yield np.concatenate(cur)

    def make_batch(self, question_ids: Sequence[int] | np.ndarray) -> Batch:
        q = np.asarray(question_ids, dtype=np.int64)
        img_ids, local = np.unique(self.q_image[q], return_inverse=True)
        images, boxes, mask = self.scene_batch(img_ids)
        programs = ProgramBatch.collate([self.compiled(i) for i in q.tolist()], local.tolist())
        qt = torch.from_numpy(q)
        return Batch(
            images, boxes, mask, programs, self.q_kind[qt], self.q_value[qt], qt, torch.from_numpy(img_ids)
        )

    def scene_batch(self, image_ids: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        """(images, boxes, mask) for a set of images, without questions (concept evaluation)."""
        n_max = max(len(self.boxes[i]) for i in image_ids)
        boxes = torch.zeros(len(image_ids), n_max, 4)
        mask = torch.zeros(len(image_ids), n_max, dtype=torch.bool)
        for b, i in enumerate(image_ids):
            k = len(self.boxes[i])
            boxes[b, :k] = self.boxes[i]
            mask[b, :k] = True
        return self.decoded(image_ids), boxes, mask

    def decoded(self, image_ids: np.ndarray) -> Tensor:
        """uint8 images (Tensor[B, 3, H, W]) of dataset rows ``image_ids``, from memory or from their files."""
        if not self.lazy_images:
            return self.images[image_ids]
        arr = np.stack([load_image(self.image_paths[i], self.height, self.width) for i in image_ids])
        return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def train_images(image_indices: Sequence[int], fraction: float, seed: int) -> frozenset[int]:
    """The images kept for training by the release's ``--data-split``: a seeded permutation of the sorted
    image indices, of which ``round(n * fraction)`` are kept (all for fraction >= 1, none for <= 0, otherwise at
    least one and at most n - 1); the rest is the dev split."""
    order = sorted(image_indices)
    n = len(order)
    perm = np.random.default_rng([seed, 7]).permutation(n)
    if fraction >= 1:
        n_train = n
    elif fraction <= 0:
        n_train = 0
    else:
        n_train = max(1, min(n - 1, round(n * fraction)))
    return frozenset(order[i] for i in perm[:n_train])


def split_train_dev(ds: QADataset, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Question ids of the train and dev parts of ``ds``, split by image (:func:`train_images`)."""
    keep = train_images([s.image_index for s in ds.scenes], fraction, seed)
    is_train = np.array([s.image_index in keep for s in ds.scenes], dtype=bool)
    q = np.arange(len(ds))
    return q[is_train[ds.q_image]], q[~is_train[ds.q_image]]
