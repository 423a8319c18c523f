"""Data I/O: scenes and questions (read, write, round trip), boxes from every source, split loading, atomic
writes, and bad input: each a DataError naming the file and the item, with nothing partial written."""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from nscl.data import (
    Box,
    Question,
    Scene,
    SplitPaths,
    load_split,
    parse_question,
    parse_scene,
    question_to_dict,
    read_questions,
    read_scenes,
    scene_to_dict,
    write_questions,
    write_scenes,
)
from nscl.errors import DataError
from nscl.io import atomic_write, atomic_write_json, atomic_write_text, read_json, read_text
from nscl.program import ClevrProgram


def rle(array: np.ndarray) -> dict:
    """A JSON-ready COCO RLE of a binary mask."""
    from pycocotools import mask as mask_utils

    r = mask_utils.encode(np.asfortranarray(array.astype(np.uint8)))
    return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}


def mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    a = np.zeros((h, w), dtype=np.uint8)
    a[y0:y1, x0:x1] = 1
    return rle(a)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------- reading
def test_read_tiny_scenes(domain, tiny_dir):
    scenes = read_scenes(tiny_dir / "scenes.json", domain)
    assert [s.image_index for s in scenes] == [0, 1]
    s0 = scenes[0]
    assert isinstance(s0, Scene)
    assert s0.image_filename == "TINY_000000.png"
    assert [o.attributes["shape"] for o in s0.objects] == ["cube", "sphere", "cylinder"]
    assert s0.objects[0].attributes == {"color": "red", "material": "metal", "shape": "cube", "size": "large"}
    assert s0.objects[0].extra["3d_coords"] == [-2.0, 0.5, 0.7]
    assert s0.objects[0].extra["rotation"] == 10.0
    assert s0.relations == {
        "left": [[], [0], [0, 1]],
        "right": [[1, 2], [2], []],
        "front": [[1], [], [0, 1]],
        "behind": [[2], [0, 2], []],
    }
    assert s0.extra == {"split": "tiny"}
    # boxes from the explicit `box` field
    assert s0.boxes == [Box(2, 12, 14, 26), Box(13, 20, 19, 27), Box(20, 7, 30, 20)]
    assert scenes[1].boxes[3].as_list() == [1.0, 10.0, 7.0, 18.0]


def test_read_tiny_questions(domain, tiny_dir):
    qs = read_questions(tiny_dir / "questions.json", domain)
    assert len(qs) == 8
    q = qs[1]
    assert isinstance(q, Question)
    assert q.index == 1 and q.image_index == 0
    assert q.question == "What is the shape of the small sphere-like blue thing?"
    assert q.answer == "sphere"
    assert q.image_filename == "TINY_000000.png"
    assert [n.function for n in q.program.nodes] == [
        "scene",
        "filter_size",
        "filter_color",
        "unique",
        "query_shape",
    ]
    assert q.extra == {"split": "tiny", "question_index": 1}
    assert [len(q.program) for q in qs] == [3, 5, 7, 6, 7, 11, 6, 11]


def test_round_trip_scenes(domain, tiny_dir, tmp_path):
    scenes = read_scenes(tiny_dir / "scenes.json", domain)
    out = tmp_path / "out" / "scenes.json"
    write_scenes(out, scenes, domain, info={"split": "x"})
    again = read_scenes(out, domain)
    assert again == scenes
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["info"] == {"split": "x"}
    assert data["scenes"][0]["objects"][0]["box"] == [2.0, 12.0, 14.0, 26.0]
    assert data["scenes"][0]["relationships"]["left"] == [[], [0], [0, 1]]
    assert files_in(out.parent) == ["scenes.json"]


def test_round_trip_questions(domain, tiny_dir, tmp_path):
    qs = read_questions(tiny_dir / "questions.json", domain)
    out = tmp_path / "questions.json"
    write_questions(out, qs)
    assert read_questions(out, domain) == qs
    assert question_to_dict(qs[0])["answer"] == "2"
    assert question_to_dict(qs[0])["program"][1] == {
        "inputs": [0],
        "function": "filter_color",
        "value_inputs": ["red"],
    }


def test_round_trip_random_scenes(domain, random_scene, tmp_path):
    import random

    rng = random.Random(3)
    records = [random_scene(domain, rng, image_index=i) for i in range(15)]
    scenes = [parse_scene(d, domain, position=i) for i, d in enumerate(records)]
    write_scenes(tmp_path / "s.json", scenes, domain)
    assert read_scenes(tmp_path / "s.json", domain) == scenes
    assert [scene_to_dict(s, domain) for s in scenes] == records


@pytest.mark.parametrize(
    ("answer", "normalised"),
    [
        ("yes", "yes"),
        (True, "yes"),
        (False, "no"),
        ("no", "no"),
        ("3", "3"),
        (3, "3"),
        (0, "0"),
        ("Red", "red"),
    ],
)
def test_question_answers_normalised(domain, answer, normalised):
    q = parse_question({"image_index": 0, "question": "?", "answer": answer}, domain)
    assert q.answer == normalised
    assert q.program is None


def test_question_generator_form(domain):
    q = parse_question(
        {
            "image_index": 2,
            "question": "Are there any cubes?",
            "answer": True,
            "question_family_index": 4,
            "template_filename": "zero_hop.json",
            "image": "CLEVR_new_000002",
            "program": [
                {"type": "scene", "inputs": [], "_output": [0, 1]},
                {"type": "filter_shape", "inputs": [0], "side_inputs": ["cube"], "_output": [1]},
                {"type": "exist", "inputs": [1], "_output": True},
            ],
        },
        domain,
        "q.json",
        5,
    )
    assert q.index == 5 and q.answer == "yes" and q.family == 4 and q.template_filename == "zero_hop.json"
    assert q.extra == {"image": "CLEVR_new_000002"}
    assert q.program == ClevrProgram.from_json(
        [
            {"function": "scene"},
            {"function": "filter_shape", "inputs": [0], "value_inputs": ["cube"]},
            {"function": "exist", "inputs": [1]},
        ]
    )


# --------------------------------------------------------------------------------------------- boxes
OBJ = {"color": "red", "material": "metal", "shape": "cube", "size": "large"}
NO_REL = {"left": [[]], "right": [[]], "front": [[]], "behind": [[]]}


def one_object_scene(**fields) -> dict:
    return {
        "image_index": 0,
        "image_filename": "a.png",
        "objects": [{**OBJ, **fields}],
        "relationships": NO_REL,
    }


def test_box_from_mask(domain):
    m = mask(10, 12, 2, 5, 3, 8)  # rows 2-4, columns 3-7
    s = parse_scene(one_object_scene(mask=m), domain)
    assert s.objects[0].box == Box(3.0, 2.0, 8.0, 5.0)
    assert s.objects[0].mask == m
    # an explicit box wins over the mask under "auto"; "mask" forces the mask
    s = parse_scene(one_object_scene(mask=m, box=[0, 0, 4, 4]), domain)
    assert s.objects[0].box == Box(0, 0, 4, 4)
    s = parse_scene(one_object_scene(mask=m, box=[0, 0, 4, 4]), domain, box_source="mask")
    assert s.objects[0].box == Box(3.0, 2.0, 8.0, 5.0)
    s = parse_scene(one_object_scene(mask=m, box=[0, 0, 4, 4]), domain, box_source="none")
    assert s.objects[0].box is None
    with pytest.raises(DataError, match="object 0: no box"):
        _ = s.boxes


def test_box_from_mask_bytes_counts(domain):
    from pycocotools import mask as mask_utils

    a = np.zeros((6, 6), dtype=np.uint8, order="F")
    a[1:3, 0:6] = 1
    s = parse_scene(one_object_scene(mask=mask_utils.encode(a)), domain, box_source="mask")
    assert s.objects[0].box == Box(0.0, 1.0, 6.0, 3.0)


def test_boxes_from_detections(domain):
    d = {
        "image_index": 4,
        "image_filename": "d.png",
        "objects": [],
        "objects_detection": [
            {"mask": mask(20, 20, 0, 4, 0, 2), "score": 0.95},
            {"mask": mask(20, 20, 5, 9, 5, 9), "score": 0.3},
            {"box": [10, 10, 15, 18], "score": 0.5},
            {"mask": mask(20, 20, 12, 20, 1, 3)},
        ],
    }
    s = parse_scene(d, domain, "s.json", detection_threshold=0.5)
    assert [o.box for o in s.objects] == [
        Box(0, 0, 2, 4),
        Box(10, 10, 15, 18),
        Box(1, 12, 3, 20),
    ]
    assert [o.extra["score"] for o in s.objects] == [0.95, 0.5, None]
    assert all(o.attributes == {} for o in s.objects)
    assert s.relations == {}
    s = parse_scene(d, domain, "s.json", detection_threshold=0.9)
    assert len(s.objects) == 2
    with pytest.raises(DataError, match=r"s\.json: scene 0 \(image_index 4\): empty scene"):
        parse_scene(
            {**d, "objects_detection": d["objects_detection"][:2]}, domain, "s.json", detection_threshold=0.99
        )


def test_detection_threshold_comes_from_the_file_unless_given(domain, tmp_path):
    dets = [
        {"box": [0, 0, 5, 5], "score": 0.8},
        {"box": [6, 6, 9, 9], "score": 0.45},
        {"box": [1, 1, 2, 2], "score": 0.1},
    ]
    scene = {"image_index": 0, "image_filename": "a.png", "objects": [], "objects_detection": dets}
    path = tmp_path / "scenes.json"
    path.write_text(json.dumps({"info": {"detection_threshold": 0.4}, "scenes": [scene]}))
    assert len(read_scenes(path, domain)[0].objects) == 2  # nscl detect's threshold, written in info
    assert len(read_scenes(path, domain, detection_threshold=0.0)[0].objects) == 3
    path.write_text(json.dumps({"scenes": [scene]}))
    assert len(read_scenes(path, domain)[0].objects) == 1  # the release's 0.5
    path.write_text(json.dumps({"info": {"detection_threshold": "high"}, "scenes": [scene]}))
    with pytest.raises(DataError, match="detection_threshold"):
        read_scenes(path, domain)


def test_detection_source_replaces_annotated_objects(domain, tiny_scenes_json):
    d = copy.deepcopy(tiny_scenes_json["scenes"][0])
    d["objects_detection"] = [{"box": [0, 0, 5, 5], "score": 0.8}, {"box": [1, 1, 2, 2], "score": 0.1}]
    s = parse_scene(d, domain, box_source="detection")
    assert [o.box for o in s.objects] == [Box(0, 0, 5, 5)]
    # "auto" keeps the annotated objects when there are some
    s = parse_scene(d, domain)
    assert len(s.objects) == 3 and s.objects[0].box == Box(2, 12, 14, 26)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([1, 2, 3], r"'box' must be \[x0, y0, x1, y1\]"),
        ([5, 5, 5, 9], "empty box"),
        ("0 0 1 1", "'box' must"),
    ],
)
def test_bad_box(domain, box, message):
    with pytest.raises(DataError, match=r"s\.json: scene 0 \(image_index 0\): object 0: " + message):
        parse_scene(one_object_scene(box=box), domain, "s.json")


def test_bad_mask(domain):
    with pytest.raises(DataError, match=r"s\.json: scene 0 \(image_index 0\): object 0: malformed RLE mask"):
        parse_scene(one_object_scene(mask={"counts": "abc"}), domain, "s.json")
    bad = {"image_index": 0, "objects": [], "objects_detection": [{"mask": {"counts": "x"}, "score": 1.0}]}
    with pytest.raises(DataError, match=r"s\.json: scene 0 \(image_index 0\): detection 0"):
        parse_scene(bad, domain, "s.json")
    bad = {"image_index": 0, "objects": [], "objects_detection": [{"score": 1.0}]}
    with pytest.raises(DataError, match="detection 0: needs 'mask' or 'box'"):
        parse_scene(bad, domain, "s.json")


def test_unknown_box_source(domain, tiny_dir):
    with pytest.raises(DataError, match="box source 'boxes'"):
        read_scenes(tiny_dir / "scenes.json", domain, box_source="boxes")


# --------------------------------------------------------------------------------------------- splits
def test_split_paths(tmp_path):
    p = SplitPaths.resolve(tmp_path)
    assert p == SplitPaths(
        tmp_path / "scenes.json", tmp_path / "questions.json", tmp_path / "images", tmp_path / "vocab.json"
    )
    p = SplitPaths.resolve(None, tmp_path / "a" / "s.json", tmp_path / "q.json", tmp_path / "img")
    assert p.scenes == tmp_path / "a" / "s.json"
    assert p.questions == tmp_path / "q.json"
    assert p.images == tmp_path / "img"
    assert p.vocab == tmp_path / "a" / "vocab.json"
    p = SplitPaths.resolve(tmp_path, questions_json=tmp_path / "other.json", vocab_json=tmp_path / "v.json")
    assert p.scenes == tmp_path / "scenes.json" and p.questions == tmp_path / "other.json"
    assert p.vocab == tmp_path / "v.json"
    with pytest.raises(DataError, match="--data-dir"):
        SplitPaths.resolve(None, scenes_json=tmp_path / "s.json")
    with pytest.raises(DataError, match="nowhere: no such data directory"):
        SplitPaths.resolve(tmp_path / "nowhere")


def test_load_split_and_check_images(domain, tiny_copy):
    split = load_split(SplitPaths.resolve(tiny_copy), domain)
    assert sorted(split.scenes) == [0, 1] and len(split.questions) == 8
    with pytest.raises(DataError) as e:
        split.check_images()
    msg = str(e.value)
    assert "scenes.json" in msg and "image_index 0" in msg and "TINY_000000.png" in msg
    (tiny_copy / "images").mkdir()
    (tiny_copy / "images" / "TINY_000000.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"image_index 1: missing image file .*TINY_000001\.png"):
        split.check_images()
    (tiny_copy / "images" / "TINY_000001.png").write_bytes(b"\x89PNG")
    split.check_images()


def test_question_without_scene(domain, tiny_copy, write_json):
    qs = json.loads((tiny_copy / "questions.json").read_text(encoding="utf-8"))
    qs["questions"][6]["image_index"] = 7
    write_json(tiny_copy / "questions.json", qs)
    with pytest.raises(DataError) as e:
        load_split(SplitPaths.resolve(tiny_copy), domain)
    msg = str(e.value)
    assert msg.startswith(str(tiny_copy / "questions.json"))
    assert "question 6" in msg and "image_index 7 has no scene" in msg


# --------------------------------------------------------------------------------------------- bad input
def test_malformed_json(domain, tmp_path):
    p = tmp_path / "scenes.json"
    p.write_text('{\n  "scenes": [,]\n}', encoding="utf-8")
    with pytest.raises(DataError, match=rf"^{p}:2:14: malformed JSON"):
        read_scenes(p, domain)
    with pytest.raises(DataError, match=rf"^{p}:2:14: "):
        read_json(p)


def test_non_utf8_file(domain, tmp_path):
    p = tmp_path / "questions.json"
    p.write_bytes(b'{"questions": ["caf\xe9"]}')
    with pytest.raises(DataError, match=rf"^{p}: not valid UTF-8 \(byte 19: b'\\xe9'\)$"):
        read_questions(p, domain)


def test_missing_file_and_directory(domain, tmp_path):
    with pytest.raises(DataError, match=rf"^{tmp_path / 'nope.json'}: no such file"):
        read_scenes(tmp_path / "nope.json", domain)
    with pytest.raises(DataError, match="is a directory"):
        read_text(tmp_path)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "missing required key 'scenes' at the top level"),
        ({"scene": []}, "missing required key 'scenes' at the top level"),
        ({"scenes": {}}, "'scenes' must be a list"),
        ({"scenes": [[]]}, "scene 0: a scene must be an object"),
        ({"scenes": [{"objects": []}]}, "scene 0: missing required key 'image_index'"),
        ({"scenes": [{"image_index": 3}]}, "scene 0: missing required key 'objects'"),
        ({"scenes": [{"image_index": "x", "objects": [OBJ]}]}, "scene 0: 'image_index' must be an integer"),
        (
            {"scenes": [{"image_index": 3, "objects": []}]},
            r"scene 0 \(image_index 3\): empty scene \(no objects\)",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": OBJ}]},
            r"scene 0 \(image_index 3\): 'objects' must be a list",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": [{"color": "red"}], "relationships": NO_REL}]},
            r"scene 0 \(image_index 3\): object 0: missing required key 'material'",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": [{**OBJ, "color": "pink"}], "relationships": NO_REL}]},
            r"scene 0 \(image_index 3\): object 0: unknown color 'pink'",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": [OBJ]}]},
            r"scene 0 \(image_index 3\): relationships is missing 'left'",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": [OBJ], "relationships": {**NO_REL, "left": []}}]},
            r"relationships\['left'\] must have one list per object \(1\)",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": [OBJ], "relationships": {**NO_REL, "left": [[0]]}}]},
            r"relationships\['left'\]\[0\] has an invalid object index",
        ),
        (
            {"scenes": [{"image_index": 3, "objects": [OBJ], "relationships": {**NO_REL, "front": [[4]]}}]},
            r"relationships\['front'\]\[0\] has an invalid object index",
        ),
        (
            {"scenes": [one_object_scene(), {**one_object_scene(), "image_filename": "b.png"}]},
            "scene 1: duplicate image_index 0",
        ),
        ({"info": [], "scenes": [one_object_scene()]}, "'info' must be an object"),
    ],
)
def test_bad_scene_files(domain, tmp_path, write_json, data, message):
    p = write_json(tmp_path / "scenes.json", data)
    with pytest.raises(DataError, match=message) as e:
        read_scenes(p, domain)
    assert str(e.value).startswith(f"{p}: ")
    assert "\n" not in str(e.value)


Q = {"image_index": 0, "question": "How many things?", "answer": "3"}
SCENE_COUNT = [{"function": "scene"}, {"function": "count", "inputs": [0]}]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ([], "question 1: a question must be an object"),
        ({"question": "?"}, "question 1: missing required key 'image_index'"),
        ({"image_index": 0}, "question 1: missing required key 'question'"),
        ({**Q, "image_index": "0"}, "question 1: 'image_index' must be an integer"),
        ({**Q, "answer": "maybe"}, "question 1: answer 'maybe' is not"),
        ({**Q, "answer": 2.5}, "question 1: answer 2.5 is not a string"),
        ({**Q, "program": {"function": "scene"}}, "question 1: program: a program must be a list"),
        (
            {**Q, "program": [{"function": "scene"}, {"function": "count_all", "inputs": [0]}]},
            "question 1: program: node 1: unknown function 'count_all'",
        ),
        (
            {
                **Q,
                "program": [
                    {"function": "scene"},
                    {"function": "filter_color", "inputs": [0], "value_inputs": ["pink"]},
                ],
            },
            r"question 1: program: node 1 \(filter_color\): unknown concept 'pink'",
        ),
        (
            {**Q, "program": [{"function": "scene"}, {"function": "count", "inputs": [3]}]},
            r"question 1: program: node 1 \(count\): input 0 refers to node 3, which is out of range",
        ),
        (
            {**Q, "program": [{"function": "scene"}, {"function": "query_color", "inputs": [0]}]},
            r"question 1: program: node 1 \(query_color\): input 0 must be Object",
        ),
    ],
)
def test_bad_question_files(domain, tmp_path, write_json, record, message):
    p = write_json(tmp_path / "questions.json", {"questions": [{**Q, "program": SCENE_COUNT}, record]})
    with pytest.raises(DataError, match=message) as e:
        read_questions(p, domain)
    assert str(e.value).startswith(f"{p}: ")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------- atomic writes
def test_unserialisable_object_writes_nothing(domain, tmp_path, tiny_dir):
    out = tmp_path / "new" / "x.json"
    with pytest.raises(TypeError):
        atomic_write_json(out, {"a": object()})
    assert not out.parent.exists() or files_in(out.parent) == []
    # a scene carrying an unserialisable extra value: nothing written, the old file kept
    scenes = read_scenes(tiny_dir / "scenes.json", domain)
    target = tmp_path / "scenes.json"
    target.write_text("old", encoding="utf-8")
    scenes[1].objects[0].extra["bad"] = {1, 2}
    with pytest.raises(TypeError):
        write_scenes(target, scenes, domain)
    assert files_in(tmp_path) == ["scenes.json"]
    assert target.read_text(encoding="utf-8") == "old"


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "v.json"
    target.write_text("old", encoding="utf-8")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert files_in(tmp_path) == ["v.json"]
    assert target.read_text(encoding="utf-8") == "old"


def test_atomic_writes_replace_and_use_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "t.txt"
    atomic_write_text(target, "h\u00e9llo")
    assert target.read_bytes() == "h\u00e9llo".encode()
    atomic_write_json(target, {"\u00e9": [1, 2]}, indent=None)
    assert json.loads(target.read_text(encoding="utf-8")) == {"\u00e9": [1, 2]}
    assert files_in(target.parent) == ["t.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
