"""``nscl serve``: start-up time (checkpoint, split and detector loaded once) and the latency of a question over
HTTP, on a new image (perception included) and on a cached one (parsing, guided decoding and the trace only).
``--screenshot PATH`` also writes a picture of the page answering a question (headless Chromium driven by
Playwright, as in tests/test_serve.py), the README's ``docs/serve.png``.

    .venv/bin/python benchmarks/serve.py [--load CKPT] [--data-dir SPLIT] [--repeat 20] [--screenshot docs/serve.png]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn

from machine import machine_line
from nscl.serve import create_app, open_session

CKPT = Path("runs/demo/parser/checkpoint_last.pth")  # what make demo leaves
SPLIT = Path("data/demo/val-set/val")
QUESTIONS = (
    "How many things are there?",
    "What color is the large cylinder?",
    "Is there a blue sphere?",
    "What number of things are behind the small cyan rubber thing and right of the cube?",
)
SHOT_QUESTION = (
    "What number of things are located behind the small cyan matt thing as well as right of the cube?"
)


def serve_in_thread(app) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return f"median {1000 * statistics.median(xs):6.1f} ms, p90 {1000 * p90:6.1f} ms, max {1000 * xs[-1]:6.1f} ms"


def latency(url: str, image: int, repeat: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        t = time.perf_counter()
        first = c.post("/api/ask", json={"question": QUESTIONS[0], "image": image + 1}).json()
        print(
            f"first question on a new image (perception included): {1000 * (time.perf_counter() - t):.1f} ms"
        )
        assert first["result"] is not None, first
        print("questions on a cached image (HTTP round trip; in brackets the server's inference alone):")
        for q in QUESTIONS:
            times, inside = [], []
            for _ in range(repeat):
                t = time.perf_counter()
                body = c.post("/api/ask", json={"question": q, "image": image}).json()
                times.append(time.perf_counter() - t)
                inside.append(body["seconds"])
            res = body["result"]
            what = f"{res['answer']} ({len(res['steps'])} steps)" if res else "refused"
            print(f"  {q!r}: {ms(times)} [median {1000 * statistics.median(inside):.1f} ms] -> {what}")
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            c.post("/api/ask", json={"question": "How many zebras are there?", "image": image})
            times.append(time.perf_counter() - t)
        print(f"  refusal (unknown word, suggestions searched): {ms(times)}")


def screenshot(url: str, path: Path, image: int, question: str, step: int | None) -> None:
    from playwright.sync_api import sync_playwright

    exe = os.environ.get("NSCL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise SystemExit("--screenshot needs Chromium (apt-get install chromium, or set NSCL_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.click(f"#gallery .thumb[data-index='{image}']")
        page.wait_for_selector("#truth tbody tr")
        page.fill("#question", question)
        page.click("#ask")
        page.wait_for_selector("#answer-value")
        if step is not None:
            page.click(f"#steps .step[data-step='{step}']")
        page.wait_for_timeout(300)  # images inside the SVGs
        path.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(path), full_page=True)
        browser.close()
    print(f"screenshot -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--load", type=Path, default=CKPT)
    ap.add_argument("--data-dir", type=Path, default=SPLIT)
    ap.add_argument("--image", type=int, default=3, help="dataset image index to ask about [3]")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--question", default=SHOT_QUESTION, help="the screenshot's question")
    ap.add_argument("--step", type=int, default=None, help="the step shown in the screenshot (default: last)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line() + f", torch {torch.__version__}, {torch.get_num_threads()} torch threads")
    t = time.perf_counter()
    session = open_session(args.load, args.data_dir)
    loaded = time.perf_counter() - t
    server, thread, url = serve_in_thread(create_app(session))
    print(
        f"start-up: checkpoint + split loaded in {loaded:.2f} s, serving after {time.perf_counter() - t:.2f} s "
        f"({session.info()['images']} images)"
    )
    try:
        latency(url, args.image, args.repeat)
        if args.screenshot is not None:
            screenshot(url, args.screenshot, args.image, args.question, args.step)
    finally:
        server.should_exit = True
        thread.join()
        session.close()


if __name__ == "__main__":
    main()
