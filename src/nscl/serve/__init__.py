"""``nscl serve``: a web page to ask questions about images and watch each reasoning step.

:func:`open_session` loads a checkpoint (and a split, a detector) once; :func:`create_app` serves it as an ASGI
app (Starlette) with the page under ``static/`` and the JSON API it uses (see :mod:`nscl.serve.app`).
"""

from __future__ import annotations

from .app import create_app
from .session import AskSettings, Limits, ServeError, Session, open_session

__all__ = ["AskSettings", "Limits", "ServeError", "Session", "create_app", "open_session"]
