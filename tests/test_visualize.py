"""`nscl visualize`: the HTML page, its overlay PNGs, image selection (-n, --random) and user errors."""

from __future__ import annotations

import html
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from nscl.data import Question, SplitPaths, load_split
from nscl.domain import builtin_domain
from nscl.errors import DataError, NSCLError
from nscl.generate.pipeline import GenerateConfig, generate_dataset
from nscl.program import ClevrProgram, translate
from nscl.visualize import PALETTE, program_text, select_images, visualize


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generated dataset (3 train images), made once for the module; tests copy it before changing it."""
    out = tmp_path_factory.mktemp("vis_ds")
    cfg = GenerateConfig(out=str(out), seed=1, train_images=3, width=64, height=48, supersample=1, workers=1)
    generate_dataset(cfg, builtin_domain(), progress=False)
    return out / "train"


@pytest.fixture
def ds(generated: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "train"
    shutil.copytree(generated, dst)
    return dst


def sections(page: Path) -> list[int]:
    return [int(m) for m in re.findall(r'<section id="image-(\d+)">', page.read_text(encoding="utf-8"))]


def test_page_names_every_question_and_its_program(ds: Path, domain) -> None:
    res = visualize(ds, n=2)
    assert res.page == ds / "visualize.html" and res.page.is_file()
    text = res.page.read_text(encoding="utf-8")
    assert res.image_indices == [0, 1] and sections(res.page) == [0, 1]
    split = load_split(SplitPaths.resolve(ds), domain)
    shown = [q for q in split.questions if q.image_index in (0, 1)]
    assert shown and res.questions == len(shown)
    for q in shown:
        assert html.escape(q.question) in text, q.question
    q = next(q for q in shown if q.program is not None)
    readable = translate(q.program, domain).to_str()
    assert html.escape(readable) in text
    assert "scene()" in readable
    # every object row, with the release's columns
    for col in ("index", "size", "color", "material", "shape", "3d_coords", "pixel_coords", "box"):
        assert f"<th>{col}</th>" in text
    assert text.count('<span class="swatch"') == sum(len(split.scenes[i].objects) for i in (0, 1))


def test_overlays_are_relative_pngs_with_boxes(ds: Path, domain) -> None:
    out = ds.parent / "pages" / "vis.html"
    res = visualize(ds, n=3, output=out)
    text = out.read_text(encoding="utf-8")
    split = load_split(SplitPaths.resolve(ds), domain)
    assert len(res.overlays) == 3
    for idx, png in zip(res.image_indices, res.overlays):
        assert png.parent == out.parent / "vis_files"
        src = re.search(rf'<section id="image-{idx}">.*?<img src="([^"]+)"', text, re.S).group(1)
        assert not src.startswith(("/", "file:")) and (out.parent / src).resolve() == png.resolve()
        scene = split.scenes[idx]
        with Image.open(png) as im:
            img = im.convert("RGB")
        with Image.open(ds / "images" / scene.image_filename) as orig:
            s = img.width // orig.width
            assert s >= 1 and img.size == (orig.width * s, orig.height * s)
        for i, o in enumerate(scene.objects):
            b = o.box
            colour = PALETTE[i % len(PALETTE)]
            # the box's bottom edge (inclusive last row) carries the object's colour somewhere along it
            row = int(b.y1 * s) - 1
            edge = [img.getpixel((x, row)) for x in range(int(b.x0 * s), int(b.x1 * s))]
            assert colour in edge, (idx, i)
    # the original image link also resolves from the page's folder
    hrefs = re.findall(r'<a href="([^"]+)">original image</a>', text)
    assert len(hrefs) == 3 and all((out.parent / h).resolve().is_file() for h in hrefs)


def test_escapes_question_text(ds: Path) -> None:
    qpath = ds / "questions.json"
    data = json.loads(qpath.read_text(encoding="utf-8"))
    data["questions"][0]["question"] = 'Is <b>this</b> & "that" red?'
    qpath.write_text(json.dumps(data), encoding="utf-8")
    text = visualize(ds, n=1).page.read_text(encoding="utf-8")
    assert "<b>this</b>" not in text
    assert "Is &lt;b&gt;this&lt;/b&gt; &amp; &quot;that&quot; red?" in text


def test_n_and_random_select_the_right_number(ds: Path) -> None:
    assert sections(visualize(ds, n=1).page) == [0]
    assert sections(visualize(ds, n=99).page) == [0, 1, 2]
    a = visualize(ds, n=2, random=True, seed=3)
    assert len(a.image_indices) == 2 and set(a.image_indices) <= {0, 1, 2}
    assert sections(a.page) == a.image_indices
    assert visualize(ds, n=2, random=True, seed=3).image_indices == a.image_indices
    assert "2 random images (seed 3)" in a.page.read_text(encoding="utf-8")
    assert select_images(range(100), 5, random=True, seed=0) != select_images(range(100), 5)
    assert select_images([5, 2, 9], 2) == [2, 5]


def test_program_text_falls_back_to_raw_nodes(domain) -> None:
    ok = ClevrProgram.from_json(
        [
            {"function": "scene"},
            {"function": "filter_size", "inputs": [0], "value_inputs": ["large"]},
            {"function": "filter_material", "inputs": [1], "value_inputs": ["metal"]},
            {"function": "filter_shape", "inputs": [2], "value_inputs": ["sphere"]},
            {"function": "unique", "inputs": [3]},
            {"function": "query_color", "inputs": [4]},
        ]
    )
    q = Question(0, 0, "What color is the large metal sphere?", "red", ok)
    assert program_text(q, domain) == ("query(color, filter(scene(), [large, metal, sphere]))", True)
    bad = ClevrProgram.from_json(
        [{"function": "scene"}, {"function": "filter_color", "inputs": [0], "value_inputs": ["red"]}]
    )
    q.program = bad
    assert program_text(q, domain) == ("0: scene(); 1: filter_color[red](0)", False)
    q.program = None
    assert program_text(q, domain) == ("", False)


def test_untranslatable_program_is_shown_raw(ds: Path) -> None:
    qpath = ds / "questions.json"
    data = json.loads(qpath.read_text(encoding="utf-8"))
    data["questions"][0]["program"] = [
        {"function": "scene", "inputs": [], "value_inputs": []},
        {"function": "filter_color", "inputs": [0], "value_inputs": ["red"]},
    ]
    qpath.write_text(json.dumps(data), encoding="utf-8")
    text = visualize(ds, n=1).page.read_text(encoding="utf-8")
    assert "0: scene(); 1: filter_color[red](0)</code>" in text


def test_missing_data_dir(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such data directory"):
        visualize(tmp_path / "nope")


def test_bad_inputs_are_one_line_errors(ds: Path, tmp_path: Path) -> None:
    with pytest.raises(NSCLError, match="-n must be at least 1"):
        visualize(ds, n=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="scenes.json: no such file"):
        visualize(empty)
    (ds / "images" / "CLEVR_train_000000.png").unlink()
    with pytest.raises(DataError, match="missing image file") as e:
        visualize(ds, n=1)
    assert "\n" not in str(e.value)
    assert not (ds / "visualize.html").exists()
    (ds / "questions.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError):
        visualize(ds, n=1)


def test_random_without_seed_reports_the_seed_it_drew(ds: Path) -> None:
    a = visualize(ds, n=2, random=True)
    assert a.seed is not None and f"(seed {a.seed})" in a.page.read_text(encoding="utf-8")
    assert visualize(ds, n=2, random=True, seed=a.seed).image_indices == a.image_indices
    assert visualize(ds, n=2).seed is None
