"""Progress bars are for a person at a terminal: a log file or a pipe gets none."""

from __future__ import annotations

import io
import sys

from nscl.progress import progress_bar


def test_no_bar_frames_on_a_pipe_or_file(monkeypatch):
    buf = io.StringIO()  # not a TTY, as `make demo > log` or a pipe
    monkeypatch.setattr(sys, "stderr", buf)
    for _ in progress_bar(range(50), True, desc="x"):
        pass
    assert buf.getvalue() == ""


def test_bar_on_a_terminal_and_off_when_disabled(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    for _ in progress_bar(range(5), True, desc="shown"):
        pass
    assert "shown" in tty.getvalue() and "\r" in tty.getvalue()
    off = Tty()
    monkeypatch.setattr(sys, "stderr", off)
    for _ in progress_bar(range(5), False, desc="hidden"):
        pass
    assert off.getvalue() == ""
