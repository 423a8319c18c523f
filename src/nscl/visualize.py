"""``nscl visualize``: a static HTML page for looking at a split (the release's "visualize-dataset" tool).

For each chosen image the page shows the image with every object's box, mask outline (when the object has a
COCO RLE ``mask``) and object index drawn on top, a table of the scene's objects, and the image's questions with
their programs in readable NS-CL form, answers and family indices.

The overlays are PNG files written next to the page, in ``<page stem>_files/``, and linked by relative paths, so
the page works when opened from disk (and keeps working when the page and its folder are moved together).
"""

from __future__ import annotations

import html
import os
import random as _random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .data import Question, Scene, SplitPaths, load_split
from .domain import Domain, load_domain
from .errors import DataError, NSCLError
from .io import atomic_write, atomic_write_text
from .program import translate

DEFAULT_N = 10
MIN_OVERLAY_WIDTH = 480  # small images are upscaled (by a whole factor) so that labels stay legible

# Distinct, saturated colours for the objects' boxes and outlines (object i gets PALETTE[i % len]).
PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)

# Object table columns after "index": the CLEVR attributes in the release's order (others follow).
_ATTRIBUTE_ORDER = ("size", "color", "material", "shape")
_EXTRA_COLUMNS = ("3d_coords", "pixel_coords")


@dataclass
class VisualizeResult:
    page: Path
    overlays: list[Path]
    image_indices: list[int]  # the images shown, in page order
    questions: int  # how many questions the page lists
    seed: int | None  # the seed of a random selection (drawn and reported when none was given)


# --------------------------------------------------------------------------------------------- selection
def select_images(
    image_indices: Sequence[int], n: int, random: bool = False, seed: int | None = None
) -> list[int]:
    """The first ``n`` image indices (in ascending order), or ``n`` drawn at random (shown in ascending order)."""
    if n < 1:
        raise NSCLError(f"-n must be at least 1, got {n}")
    ordered = sorted(image_indices)
    if not random:
        return ordered[:n]
    rng = _random.Random(seed)
    return sorted(rng.sample(ordered, min(n, len(ordered))))


# --------------------------------------------------------------------------------------------- text
def program_text(q: Question, domain: Domain) -> tuple[str, bool]:
    """The question's program in readable NS-CL form, or (when it cannot be translated) its raw CLEVR nodes.

    Returns ``(text, translated)``; a question without a program gives ``("", False)``.
    """

    if q.program is None:
        return "", False
    try:
        return translate(q.program, domain).to_str(), True
    except NSCLError:
        parts = []
        for i, node in enumerate(q.program.nodes):
            values = f"[{', '.join(node.values)}]" if node.values else ""
            inputs = ", ".join(str(j) for j in node.inputs)
            parts.append(f"{i}: {node.function}{values}({inputs})")
        return "; ".join(parts), False


def _num(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.2f}"
    return str(v)


def _value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return _num(v)


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _href(path: Path, base: Path) -> str:
    """A link to ``path`` relative to folder ``base`` (absolute ``file:`` URI when no relative path exists)."""
    try:
        rel = os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_uri()
    return quote(Path(rel).as_posix())


# --------------------------------------------------------------------------------------------- drawing
def _decode_mask(rle: Any, height: int, width: int, where: str):  # noqa: ANN202
    """A COCO RLE mask as a boolean (height, width) array, resized (nearest) if stored at another size."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    try:
        r = dict(rle)
        if isinstance(r.get("counts"), str):
            r["counts"] = r["counts"].encode("ascii")
        with warnings.catch_warnings():  # pycocotools vs numpy 2: a harmless DeprecationWarning about copy=
            warnings.simplefilter("ignore", DeprecationWarning)
            m = np.asarray(mask_utils.decode(r), dtype=bool)
    except (TypeError, ValueError, KeyError, UnicodeEncodeError) as e:
        raise DataError(f"{where}: malformed RLE mask ({e})") from None
    if m.ndim == 3:
        m = m[..., 0]
    if m.shape != (height, width):
        m = np.asarray(Image.fromarray(m).resize((width, height), Image.Resampling.NEAREST), dtype=bool)
    return m


def _outline(m, width: int = 1):  # noqa: ANN001, ANN202
    """The inner boundary of a boolean mask, ``width`` pixels thick: mask pixels within ``width`` 4-neighbour
    steps of a pixel outside it (the image edge counts as outside)."""
    import numpy as np

    interior = m
    for _ in range(width):
        p = np.pad(interior, 1, constant_values=False)
        interior = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~interior


def _font(size: int):  # noqa: ANN202
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def render_overlay(scene: Scene, image_path: Path, where: str = ""):  # noqa: ANN201
    """The scene's image (upscaled if narrow) with each object's mask outline, box and index drawn on top."""
    import numpy as np
    from PIL import Image, ImageDraw, UnidentifiedImageError

    w = where or f"scene image_index {scene.image_index}"
    if not image_path.is_file():
        raise DataError(f"{w}: missing image file {image_path}")
    try:
        with Image.open(image_path) as im:
            img = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{w}: cannot read image {image_path} ({e})") from None
    width, height = img.size
    s = max(1, -(-MIN_OVERLAY_WIDTH // width))  # whole scale factor, so pixels map exactly
    if s > 1:
        img = img.resize((width * s, height * s), Image.Resampling.NEAREST)
    line = max(1, round(img.width / 300))  # stroke width of boxes and outlines, in output pixels
    # Mask outlines first (under the boxes), painted through numpy.
    px = np.array(img)
    for i, o in enumerate(scene.objects):
        if o.mask is None:
            continue
        m = _decode_mask(o.mask, height, width, f"{w}: object {i}")
        if s > 1:
            m = m.repeat(s, axis=0).repeat(s, axis=1)
        px[_outline(m, line)] = PALETTE[i % len(PALETTE)]
    img = Image.fromarray(px)
    draw = ImageDraw.Draw(img)
    font = _font(max(11, img.width // 32))
    labels: list[tuple[float, float, int]] = []
    for i, o in enumerate(scene.objects):
        colour = PALETTE[i % len(PALETTE)]
        if o.box is not None:
            b = o.box
            # xyxy with exclusive maximum -> PIL's inclusive corners, in upscaled pixels
            draw.rectangle(
                [b.x0 * s, b.y0 * s, max(b.x0 * s, b.x1 * s - 1), max(b.y0 * s, b.y1 * s - 1)],
                outline=colour,
                width=line,
            )
            labels.append((b.x0 * s, b.y0 * s, i))
        else:
            pc = o.extra.get("pixel_coords")
            if isinstance(pc, list) and len(pc) >= 2 and all(isinstance(v, (int, float)) for v in pc[:2]):
                labels.append((float(pc[0]) * s, float(pc[1]) * s, i))
    # Labels last, so that no box is drawn over one.
    for x, y, i in labels:
        colour = PALETTE[i % len(PALETTE)]
        text = str(i)
        l, t, r, btm = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, btm - t
        pad = line
        bx0 = min(max(0.0, x), img.width - tw - 2 * pad)
        by0 = min(max(0.0, y - th - 2 * pad), img.height - th - 2 * pad)
        if by0 < 0:
            by0 = 0.0
        draw.rectangle([bx0, by0, bx0 + tw + 2 * pad, by0 + th + 2 * pad], fill=colour)
        dark = sum(colour) / 3 > 140
        draw.text(
            (bx0 + pad - l, by0 + pad - t), text, fill=(0, 0, 0) if dark else (255, 255, 255), font=font
        )
    return img


def _save_png(img, path: Path) -> None:  # noqa: ANN001
    atomic_write(path, lambda f: img.save(f, format="PNG"))


# --------------------------------------------------------------------------------------------- page
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; border-top: 1px solid #ccc; padding-top: 1em; }
.meta { color: #555; }
.scene { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.scene img { max-width: 100%; image-rendering: pixelated; border: 1px solid #999; }
table { border-collapse: collapse; font-size: 0.9em; margin-top: 0.8em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { font-size: 0.95em; }
code.raw { color: #a33; }
.swatch { display: inline-block; width: 0.8em; height: 0.8em; margin-right: 0.3em; vertical-align: middle; }
"""


def _objects_table(scene: Scene, attributes: list[str]) -> str:
    cols = ["index", *attributes, *_EXTRA_COLUMNS, "box"]
    rows = ["<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>"]
    for i, o in enumerate(scene.objects):
        r, g, b = PALETTE[i % len(PALETTE)]
        cells = [f'<td class="num"><span class="swatch" style="background:rgb({r},{g},{b})"></span>{i}</td>']
        cells += [f"<td>{_esc(o.attributes.get(a, ''))}</td>" for a in attributes]
        cells += [f"<td>{_esc(_value(o.extra.get(c)))}</td>" for c in _EXTRA_COLUMNS]
        cells.append(f"<td>{_esc(_value(o.box.as_list()) if o.box is not None else '')}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return '<table class="objects">\n' + "\n".join(rows) + "\n</table>"


def _questions_table(questions: Sequence[Question], domain: Domain) -> str:
    if not questions:
        return '<p class="meta">No questions for this image.</p>'
    head = "<tr><th>#</th><th>question</th><th>program</th><th>answer</th><th>family</th></tr>"
    rows = [head]
    for q in questions:
        text, ok = program_text(q, domain)
        prog = (
            f"<code>{_esc(text)}</code>"
            if ok
            else (
                f'<code class="raw" title="raw CLEVR program (not translatable)">{_esc(text)}</code>'
                if text
                else ""
            )
        )
        rows.append(
            "<tr>"
            f'<td class="num">{q.index}</td>'
            f"<td>{_esc(q.question)}</td>"
            f"<td>{prog}</td>"
            f"<td>{_esc(q.answer if q.answer is not None else '')}</td>"
            f'<td class="num">{_esc(q.family if q.family is not None else "")}</td>'
            "</tr>"
        )
    return '<table class="questions">\n' + "\n".join(rows) + "\n</table>"


def _attribute_columns(domain: Domain) -> list[str]:
    names = [a.name for a in domain.attributes]
    return [a for a in _ATTRIBUTE_ORDER if a in names] + [a for a in names if a not in _ATTRIBUTE_ORDER]


# --------------------------------------------------------------------------------------------- entry point
def visualize(
    data: str | Path | SplitPaths,
    domain: Domain | None = None,
    n: int = DEFAULT_N,
    random: bool = False,
    seed: int | None = None,
    output: str | Path | None = None,
) -> VisualizeResult:
    """Write the HTML page for ``n`` images of a split (a split folder, or resolved :class:`SplitPaths`).

    The page goes to ``output`` (default ``<data-dir>/visualize.html``), its overlay PNGs to the folder
    ``<page stem>_files/`` beside it; every file is written atomically.
    """
    if n < 1:
        raise NSCLError(f"-n must be at least 1, got {n}")
    paths = data if isinstance(data, SplitPaths) else SplitPaths.resolve(data)
    domain = domain if domain is not None else load_domain(None)
    for p in (paths.scenes, paths.questions):
        if not p.is_file():
            raise DataError(f"{p}: no such file")
    split = load_split(paths, domain)
    if random and seed is None:  # draw one, and print it on the page, so that the selection can be repeated
        seed = _random.SystemRandom().randrange(2**31)
    chosen = select_images(list(split.scenes), n, random, seed)
    if not chosen:
        raise DataError(f"{paths.scenes}: no scenes to show")

    page = Path(output) if output is not None else paths.scenes.parent / "visualize.html"
    if page.is_dir():
        raise NSCLError(f"{page}: is a folder; give a file name for the page")
    files_dir = page.parent / f"{page.stem}_files"
    by_image: dict[int, list[Question]] = {i: [] for i in chosen}
    for q in split.questions:
        if q.image_index in by_image:
            by_image[q.image_index].append(q)

    attributes = _attribute_columns(domain)
    overlays: list[Path] = []
    sections: list[str] = []
    for idx in chosen:
        scene = split.scenes[idx]
        where = f"{paths.scenes}: scene image_index {idx}"
        if not scene.image_filename:
            raise DataError(f"{where}: no image_filename")
        image_path = paths.images / scene.image_filename
        img = render_overlay(scene, image_path, where)
        overlay = files_dir / f"overlay_{idx}.png"
        _save_png(img, overlay)
        overlays.append(overlay)
        qs = by_image[idx]
        sections.append(
            f'<section id="image-{idx}">\n'
            f"<h2>image_index {idx}: {_esc(scene.image_filename)}</h2>\n"
            f'<p class="meta">{len(scene.objects)} objects, {len(qs)} questions; '
            f'<a href="{_esc(_href(image_path, page.parent))}">original image</a></p>\n'
            '<div class="scene">\n'
            f'<img src="{_esc(_href(overlay, page.parent))}" width="{img.width}" height="{img.height}" '
            f'alt="{_esc(scene.image_filename)} with object boxes">\n'
            f"{_objects_table(scene, attributes)}\n"
            "</div>\n"
            f"{_questions_table(qs, domain)}\n"
            "</section>"
        )

    how = f"{len(chosen)} random images (seed {seed})" if random else f"the first {len(chosen)} images"
    title = f"nscl visualize: {paths.scenes.parent}"
    body = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_esc(title)}</h1>\n"
        f'<p class="meta">Showing {_esc(how)} of {len(split.scenes)}; scenes: {_esc(paths.scenes)}, '
        f"questions: {_esc(paths.questions)}, images: {_esc(paths.images)}. Boxes and mask outlines are drawn "
        "in each object's colour, labelled with its index. Programs are in NS-CL form; any shown "
        '<code class="raw">in red</code> are raw CLEVR nodes that have no NS-CL translation.</p>\n'
        + "\n".join(sections)
        + "\n</body>\n</html>\n"
    )
    atomic_write_text(page, body)
    n_questions = sum(len(v) for v in by_image.values())
    return VisualizeResult(page, overlays, chosen, n_questions, seed if random else None)
