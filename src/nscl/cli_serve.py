"""Command line for ``nscl serve``: a web page to ask questions about images and watch each reasoning step.

Flags and a thin handler, registered by :mod:`nscl.cli` (which owns logging, errors and exit codes); the web
libraries are imported inside the handler.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import socket
from collections.abc import Callable

from .errors import NSCLError

log = logging.getLogger("nscl")

__all__ = ["COMMANDS"]


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--load", required=True, help="NSCL checkpoint with a parser (nscl train --training-target parser)"
    )
    p.add_argument(
        "--data-dir", default=None, help="split folder whose images the page offers (scenes.json, images/)"
    )
    p.add_argument(
        "--detector", default=None, help="detector checkpoint (nscl train-detector): enables uploads"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    p.add_argument("--port", type=int, default=8000, help="port [8000]")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto [cpu]")
    p.add_argument(
        "--guided-beam", type=int, default=None, help="execution-guided parsing beam (0: off) [as nscl ask]"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port before the model loads, so that a busy port fails at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise NSCLError(f"cannot listen on {host}:{port} ({e.strerror or e}); try another --port") from None
    return sock


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .device import resolve_device
        from .serve import AskSettings, create_app, open_session
    except ImportError as e:
        raise NSCLError(
            f"nscl serve needs the web libraries ({e.name} is missing): pip install nscl"
        ) from None
    if not 0 < args.port < 65536:
        raise NSCLError(f"--port {args.port}: expected 1-65535")
    sock = _bind(args.host, args.port)
    settings = (
        AskSettings() if args.guided_beam is None else AskSettings(guided_beam=max(0, args.guided_beam))
    )
    session = open_session(
        args.load, args.data_dir, args.detector, resolve_device(args.device), settings=settings
    )
    if not _is_loopback(args.host):
        log.warning(
            "serving on %s: anyone who can reach this machine can use the page (there is no login)", args.host
        )
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    log.info("nscl serve: open http://%s:%d/ (Ctrl-C stops)", shown, args.port)
    config = uvicorn.Config(
        create_app(session),
        host=args.host,
        port=args.port,
        log_level="warning",
        limit_concurrency=64,
        timeout_keep_alive=5,
        server_header=False,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        session.close()
        sock.close()
    return 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str]] = {
    "serve": (
        "a web page to ask questions about images and watch each reasoning step (http://127.0.0.1:8000/)",
        _serve_flags,
        "nscl.cli_serve:cmd_serve",
    ),
}
