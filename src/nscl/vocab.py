"""Tokenisation (no downloads) and the release-compatible ``vocab.json`` (word -> index)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .errors import DataError
from .io import atomic_write_json, read_json

PAD, UNK, BOS, EOS = "<PAD>", "<UNK>", "<BOS>", "<EOS>"
SPECIALS = (PAD, UNK, BOS, EOS)
_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(text: str) -> list[str]:
    """Lower-case words and single punctuation marks: ``"Is it red?"`` -> ``["is", "it", "red", "?"]``."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocab:
    """word -> index with ``<PAD>`` = 0, ``<UNK>`` = 1, ``<BOS>`` = 2, ``<EOS>`` = 3."""

    words: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.words[: len(SPECIALS)] != SPECIALS:
            raise ValueError(f"a vocabulary must start with {SPECIALS}")

    @cached_property
    def index(self) -> Mapping[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def encode(self, tokens: Iterable[str], add_bos_eos: bool = False) -> list[int]:
        idx = self.index
        ids = [idx.get(t, 1) for t in tokens]
        return [2] + ids + [3] if add_bos_eos else ids

    def unknown(self, tokens: Iterable[str]) -> list[str]:
        idx = self.index
        return [t for t in tokens if t not in idx]

    @classmethod
    def build(cls, texts: Iterable[str], extra_words: Iterable[str] = ()) -> Vocab:
        """Every token of ``texts`` plus ``extra_words`` (e.g. concept names), sorted for determinism."""
        words = {t for text in texts for t in tokenize(text)} | set(extra_words)
        words -= set(SPECIALS)
        return cls(SPECIALS + tuple(sorted(words)))

    def to_json(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @classmethod
    def from_json(cls, data: object, source: str = "vocab.json") -> Vocab:
        if not isinstance(data, Mapping) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in data.values()
        ):
            raise DataError(f"{source}: a vocabulary must map words to integer indices")
        by_index = sorted(data.items(), key=lambda kv: kv[1])
        if [i for _, i in by_index] != list(range(len(by_index))):
            raise DataError(f"{source}: indices must be 0..{len(by_index) - 1} without gaps")
        words = tuple(w for w, _ in by_index)
        if words[: len(SPECIALS)] != SPECIALS:
            raise DataError(f"{source}: must start with <PAD>=0, <UNK>=1, <BOS>=2, <EOS>=3")
        return cls(words)

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        return cls.from_json(read_json(path), str(path))

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_json(), indent=0)
