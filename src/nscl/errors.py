"""User-facing errors.

Every error a user can cause (bad files, bad programs, bad flags) is an :class:`NSCLError` whose message is a
single line naming the file, the item and the problem. The CLI prints it and exits with status 2.
"""

from __future__ import annotations


class NSCLError(Exception):
    """An error caused by the user's input; its message is one self-contained line."""


class DataError(NSCLError):
    """A data file (scenes, questions, vocab, images) is missing, malformed or inconsistent."""


class ProgramError(NSCLError):
    """A program is malformed, ill-typed, or uses something the domain does not define."""


def where(file: object = None, item: object = None) -> str:
    """Format the location prefix of an error message: ``file: item: ``."""
    parts = [str(p) for p in (file, item) if p is not None and p != ""]
    return "".join(p + ": " for p in parts)
