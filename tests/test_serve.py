"""``nscl serve``: the JSON API over a real uvicorn server (httpx), and the page in headless Chromium (Playwright).

One tiny checkpoint (an untrained small NSCL model and a parser fitted to a few question/program pairs) and a
tiny random detector serve the generated fixture split. The browser tests skip, saying why, when Playwright or a
Chromium executable is missing (CI installs Debian's chromium in ``.ci/run``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from PIL import Image

from nscl.checkpoint import save_checkpoint
from nscl.cli_serve import COMMANDS
from nscl.domain import Domain
from nscl.models.detector import CenterDetector, DetectorConfig
from nscl.serve import Limits, Session, create_app, open_session

HEIGHT = 48  # the generated fixture's image height
PAIRS = [
    ("How many things are there?", "count(scene())"),
    ("How many red things are there?", "count(filter(scene(), [red]))"),
    ("What color is the large cylinder?", "query(color, filter(scene(), [large, cylinder]))"),
    ("Is there a blue sphere?", "exist(filter(scene(), [blue, sphere]))"),
]
UPLOAD_LIMIT = 64 * 1024  # small limits keep the oversized cases fast
PIXEL_LIMIT = 200 * 200
IMAGE = 3  # the dataset image the tests ask about

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- fixtures
def make_checkpoint(domain: Domain, root: Path, ask_state) -> Path:
    """A checkpoint with a small randomly initialised NSCL model and a parser fitted to PAIRS."""
    _, state, _ = ask_state(domain, PAIRS, 40)
    save_checkpoint(root / "model.pth", state)
    return root / "model.pth"


def make_detector(root: Path) -> Path:
    """An untrained detector with threshold 0: it always 'finds' a few boxes, which is all the server needs."""
    torch.manual_seed(0)
    cfg = DetectorConfig(height=48, width=8, head_channels=16, threshold=0.0, max_detections=4)
    state = {
        "kind": "detector",
        "model": CenterDetector(cfg).state_dict(),
        "config": {"model": cfg.to_dict()},
    }
    save_checkpoint(root / "detector.pth", state)
    return root / "detector.pth"


@dataclass
class Server:
    """A uvicorn server in a thread, on a free port of 127.0.0.1."""

    session: Session
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.session.close()


def start_server(session: Session) -> Server:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(session), log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return Server(session, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture(scope="module")
def files(domain: Domain, tmp_path_factory: pytest.TempPathFactory, ask_state) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    return {"ckpt": make_checkpoint(domain, root, ask_state), "detector": make_detector(root)}


@pytest.fixture(scope="module")
def server(files: dict[str, Path], gen_root: Path) -> Iterator[Server]:
    limits = Limits(upload_bytes=UPLOAD_LIMIT, image_pixels=PIXEL_LIMIT)
    session = open_session(files["ckpt"], gen_root / "val", files["detector"], limits=limits)
    srv = start_server(session)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def bare_server(files: dict[str, Path], gen_root: Path) -> Iterator[Server]:
    """The same checkpoint and split, no detector: uploads are refused."""
    srv = start_server(open_session(files["ckpt"], gen_root / "val"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def scene(gen_root: Path) -> dict:
    scenes = json.loads((gen_root / "val" / "scenes.json").read_text())["scenes"]
    return next(s for s in scenes if s["image_index"] == IMAGE)


def png_bytes(width: int, height: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(buf, format=fmt)
    return buf.getvalue()


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    return body["error"]


# --------------------------------------------------------------------------------------------- API
def test_info_gallery_and_ground_truth(client: httpx.Client, scene: dict) -> None:
    info = client.get("/api/info").json()
    assert info["images"] == 10 and info["uploads"] is True
    assert info["limits"]["upload_bytes"] == UPLOAD_LIMIT
    assert "How many things are there?" in info["examples"]
    page = client.get("/api/images", params={"page": 1, "per_page": 4}).json()
    assert page["total"] == 10 and page["pages"] == 3 and len(page["items"]) == 4
    assert [it["index"] for it in page["items"]] == [4, 5, 6, 7]
    d = client.get(f"/api/images/{IMAGE}").json()
    assert d["width"] == 64 and d["height"] == HEIGHT
    assert [o["attributes"]["shape"] for o in d["objects"]] == [o["shape"] for o in scene["objects"]]
    assert [o["box"] for o in d["objects"]] == [[float(v) for v in o["box"]] for o in scene["objects"]]
    img = client.get(d["url"])
    assert img.status_code == 200 and img.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_ask_answers_with_one_step_per_program_node(client: httpx.Client, scene: dict) -> None:
    r = client.post("/api/ask", json={"question": "How many things are there?", "image": IMAGE})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["refusal"] is None and body["image"] == {"index": IMAGE}
    res = body["result"]
    assert res["program"] == "count(scene())" and res["answer"] == str(len(scene["objects"]))
    assert len(res["steps"]) == len(res["program_nscl"]) == 2
    assert len(res["steps"][0]["objects"]) == len(scene["objects"]) and res["confidence"] > 0.99
    r = client.post("/api/ask", json={"question": "What color is the large cylinder?", "image": IMAGE})
    res = r.json()["result"]
    assert len(res["steps"]) == len(res["program_nscl"]) == 3
    assert res["steps"][2]["value"] == res["answer"] and res["steps"][2]["distribution"]


def test_unknown_word_is_a_refusal_not_an_error(client: httpx.Client) -> None:
    r = client.post("/api/ask", json={"question": "How many zebras are there?", "image": IMAGE})
    assert r.status_code == 200
    body = r.json()
    assert body["result"] is None
    assert "unknown word 'zebras'" in body["refusal"]


def test_the_split_answer_is_the_expected_one(server: Server, gen_root: Path) -> None:
    q = json.loads((gen_root / "val" / "questions.json").read_text())["questions"][0]
    assert server.session.expected_answer(q["image_index"], "  " + q["question"].upper()) == q["answer"]
    assert server.session.expected_answer(q["image_index"], "How many pink ponies?") is None


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (
            {"content": b'{"question": "How', "headers": {"content-type": "application/json"}},
            400,
            "not valid JSON",
        ),
        ({"json": ["How many things are there?"]}, 400, "expected a JSON object"),
        ({"json": {"image": IMAGE}}, 400, "'question' must be a non-empty string"),
        ({"json": {"question": " ", "image": IMAGE}}, 400, "'question' must be a non-empty string"),
        ({"json": {"question": "x" * 301, "image": IMAGE}}, 400, "the limit is 300"),
        ({"json": {"question": "How many things?"}}, 400, "exactly one of 'image'"),
        ({"json": {"question": "How many things?", "image": 0, "upload": "0" * 16}}, 400, "exactly one"),
        ({"json": {"question": "How many things?", "image": True}}, 400, "'image' must be"),
        ({"json": {"question": "How many things?", "image": "../../etc/passwd"}}, 400, "'image' must be"),
        ({"json": {"question": "How many things?", "upload": "../x"}}, 400, "'upload' must be"),
        ({"json": {"question": "How many things?", "image": 0, "path": "/etc"}}, 400, "unknown field 'path'"),
        ({"json": {"question": "How many things?", "image": 12345}}, 404, "no image with index 12345"),
        ({"json": {"question": "How many things?", "upload": "0123456789abcdef"}}, 404, "no such upload"),
        ({"content": b"question=hi", "headers": {"content-type": "text/plain"}}, 415, "as JSON"),
        (
            {"content": b" " * 20000, "headers": {"content-type": "application/json"}},
            413,
            "request body is",
        ),
    ],
)
def test_malformed_questions_get_4xx_json(
    client: httpx.Client, kwargs: dict, status: int, message: str
) -> None:
    assert message in error_of(client.post("/api/ask", **kwargs), status)


def test_no_client_path_reaches_the_filesystem(client: httpx.Client) -> None:
    assert "no image" in error_of(client.get("/api/images/99"), 404)
    assert "no image" in error_of(client.get("/api/images/-1/image"), 404)
    for path in (
        "/api/images/..%2F..%2Fscenes.json/image",
        "/static/../session.py",
        "/api/uploads/..%2Fx/image",
    ):
        error_of(client.get(path), 404)
    assert "past the last page" in error_of(client.get("/api/images", params={"page": 9}), 404)
    assert "'per_page' must be" in error_of(client.get("/api/images", params={"per_page": 0}), 400)
    assert "method not allowed" in error_of(client.get("/api/ask"), 405)


def test_security_headers_and_static_files(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200 and "<title>NS-CL" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("app.js", "app.css"):
        assert client.get(f"/static/{name}").status_code == 200


@pytest.mark.parametrize(
    ("content", "kind", "status", "message"),
    [
        (b"hello, not an image", "text/plain", 415, "must be PNG or JPEG"),
        (b"hello, not an image", "image/png", 415, "not a decodable PNG"),
        (png_bytes(32, 32, "JPEG"), "image/png", 415, "holds JPEG"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * (UPLOAD_LIMIT + 1), "image/png", 413, "the limit is"),
        (png_bytes(300, 300), "image/png", 413, "pixels; the limit is"),
        (png_bytes(32, 32)[:60], "image/png", 400, "cannot decode"),
        (b"", "image/png", 400, "empty"),
    ],
)
def test_bad_uploads_get_4xx_json(
    client: httpx.Client, content: bytes, kind: str, status: int, message: str
) -> None:
    r = client.post("/api/uploads", content=content, headers={"content-type": kind})
    assert message in error_of(r, status)


def test_upload_then_ask_about_it(client: httpx.Client, gen_root: Path, scene: dict) -> None:
    data = (gen_root / "val" / "images" / scene["image_filename"]).read_bytes()
    r = client.post("/api/uploads", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 201, r.text
    up = r.json()
    assert (up["width"], up["height"]) == (64, HEIGHT) and 1 <= len(up["objects"]) <= 4
    assert client.get(up["url"]).content[:4] == b"\x89PNG"
    res = client.post("/api/ask", json={"question": "How many things are there?", "upload": up["id"]}).json()
    assert res["result"]["answer"] == str(len(up["objects"])) and res["expected"] is None


def test_uploads_need_a_detector(bare_server: Server) -> None:
    with httpx.Client(base_url=bare_server.url) as c:
        assert c.get("/api/info").json()["uploads"] is False
        r = c.post("/api/uploads", content=png_bytes(32, 32), headers={"content-type": "image/png"})
        assert "--detector" in error_of(r, 409)


def test_concurrent_questions_share_one_model(client: httpx.Client, server: Server) -> None:
    questions = ["How many things are there?", "Is there a blue sphere?"] * 4

    def one(q: str) -> str:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/api/ask", json={"question": q, "image": IMAGE}).json()["result"]["answer"]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(one, questions))
    assert answers[0::2] == [answers[0]] * 4 and answers[1::2] == [answers[1]] * 4


def test_cli_defaults_are_safe() -> None:
    help_, flags, handler = COMMANDS["serve"]
    p = argparse.ArgumentParser()
    flags(p)
    args = p.parse_args(["--load", "x.pth"])
    assert args.host == "127.0.0.1" and args.port == 8000 and handler == "nscl.cli_serve:cmd_serve"
    assert Limits().upload_bytes == 10 * 2**20


def test_a_busy_port_is_a_one_line_error() -> None:
    from nscl.cli_serve import _bind
    from nscl.errors import NSCLError

    taken = _bind("127.0.0.1", 0)
    taken.listen()
    try:
        with pytest.raises(NSCLError, match="cannot listen on 127.0.0.1:.*try another --port"):
            _bind("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


# --------------------------------------------------------------------------------------------- browser
def chromium_executable() -> str | None:
    """``$NSCL_CHROMIUM``, else the first Chromium or Chrome on PATH (Debian: ``apt-get install chromium``)."""
    env = os.environ.get("NSCL_CHROMIUM")
    if env:
        return env if Path(env).is_file() else None
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="browser tests need Playwright for Python (pip install -e .[dev])"
    )
    exe = chromium_executable()
    if exe is None:
        pytest.skip("browser tests need Chromium: no chromium executable found (apt-get install chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=exe,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield b
        b.close()


def open_page(browser, url: str) -> tuple[object, list[str]]:
    """A fresh page at ``url``, ready (the gallery loaded); and the list its script errors and CSP violations
    are collected into."""
    page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on(
        "console",
        lambda m: m.type == "error" and "Failed to load resource" not in m.text and problems.append(m.text),
    )
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=10000)
    return page, problems


@pytest.fixture
def page(browser, server: Server) -> Iterator[tuple[object, list[str]]]:
    page, problems = open_page(browser, server.url)
    yield page, problems
    page.context.close()
    assert not problems, problems


def test_page_answers_and_shows_every_step(page, scene: dict) -> None:
    pg, _ = page
    assert pg.locator("#gallery .thumb").count() == 10
    pg.click(f"#gallery .thumb[data-index='{IMAGE}']")
    n = len(scene["objects"])
    pg.wait_for_selector(f"#truth tbody tr:nth-child({n})")
    assert pg.locator("#stage rect.box").count() == n
    pg.fill("#question", "How many things are there?")
    pg.click("#ask")
    pg.wait_for_selector("#answer-value")
    assert pg.text_content("#answer-value") == str(n)
    assert pg.locator("#steps .step").count() == 2  # scene, count
    assert "count(scene())" in pg.text_content("#program-text")
    pg.click("#steps .step[data-step='0']")
    assert "active" in pg.get_attribute("#steps .step[data-step='0']", "class")
    assert pg.locator("#stage rect.box.selected").count() == n  # every object is in scene()
    assert "step 0: scene()" in pg.text_content("#stage-title")
    pg.click("#examples .chip >> text=What color is the large cylinder?")
    pg.wait_for_selector("#steps .step[data-step='2']")
    assert pg.locator("#steps .step").count() == 3
    pg.click("#steps .step[data-step='2']")  # the query: its input object, emphasised
    assert pg.locator("#stage rect.box.input.selected").count() == 1


def test_page_shows_the_parser_refusal(page) -> None:
    pg, _ = page
    pg.click(f"#gallery .thumb[data-index='{IMAGE}']")
    pg.wait_for_selector("#truth tbody tr")
    pg.fill("#question", "How many zebras are there?")
    pg.click("#ask")
    pg.wait_for_selector("#message.refusal")
    assert "unknown word 'zebras'" in pg.text_content("#message")
    assert pg.locator("#answer").is_hidden()


def test_page_shows_upload_errors(page) -> None:
    pg, _ = page
    pg.set_input_files("#upload", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not an image"})
    pg.wait_for_selector("#message.error")
    assert "must be PNG or JPEG" in pg.text_content("#message")
    big = {"name": "big.png", "mimeType": "image/png", "buffer": b"\x89PNG" + b"\0" * UPLOAD_LIMIT}
    pg.set_input_files("#upload", big)
    pg.wait_for_function("document.querySelector('#message').textContent.includes('big.png')")
    assert "the limit is" in pg.text_content("#message")
    pg.set_input_files("#upload", {"name": "ok.png", "mimeType": "image/png", "buffer": png_bytes(64, 48)})
    pg.wait_for_selector("#message", state="hidden")
    assert pg.locator("#stage rect.box").count() >= 1 and "detector" in pg.text_content("#truth")


def test_page_without_detector_offers_the_dataset(browser, bare_server: Server) -> None:
    pg, problems = open_page(browser, bare_server.url)
    assert pg.is_disabled("#upload")
    assert "Uploads need a detector" in pg.text_content("#upload-hint")
    pg.context.close()
    assert not problems
