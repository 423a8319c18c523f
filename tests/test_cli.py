"""The command line, in process: `nscl execute`, `nscl vocab`, --version/--help, and user errors (exit status
2, one line on stderr naming the file, no traceback, nothing written)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from nscl import __version__
from nscl.cli import main
from nscl.vocab import SPECIALS, Vocab


def files_in(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_user_error(rc: int, err: str, command: str, *needles: str) -> str:
    assert rc == 2
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"nscl {command}: error: "), line
    assert "Traceback" not in err
    for n in needles:
        assert n in line, (n, line)
    return line


def load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def save(path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


# --------------------------------------------------------------------------------------------- basics
def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"nscl {__version__}"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "vocab" in out and "execute" in out
    assert "--version" in out


@pytest.mark.parametrize("command", ["execute", "vocab"])
def test_command_help(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--data-dir", "--data-scenes-json", "--data-questions-json", "--domain"):
        assert flag in out


def test_no_command_prints_help(capsys):
    rc, out, _ = run(capsys)
    assert rc == 2
    assert "execute" in out


def test_unknown_flag_is_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["execute", "--no-such-flag"])
    assert e.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- execute
def overall(out: str) -> list[str]:
    (line,) = [ln for ln in out.splitlines() if ln.startswith("overall")]
    return line.split()


def test_execute_tiny(capsys, tiny_dir):
    rc, out, err = run(capsys, "execute", "--data-dir", tiny_dir)
    assert rc == 0, err
    assert overall(out) == ["overall", "8", "1.000000", "1.000000"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[1:-1]}
    assert rows == {
        "count": ["3", "1.000000", "1.000000"],
        "count_greater": ["1", "1.000000", "1.000000"],
        "exist": ["1", "1.000000", "1.000000"],
        "query": ["2", "1.000000", "1.000000"],
        "query_attribute_equal": ["1", "1.000000", "1.000000"],
    }
    assert "mismatch" not in out


def test_execute_with_file_flags(capsys, tiny_dir, tmp_path):
    shutil.copy(tiny_dir / "scenes.json", tmp_path / "s.json")
    (tmp_path / "other").mkdir()
    shutil.copy(tiny_dir / "questions.json", tmp_path / "other" / "q.json")
    rc, out, err = run(
        capsys,
        "execute",
        "--data-scenes-json",
        tmp_path / "s.json",
        "--data-questions-json",
        tmp_path / "other" / "q.json",
    )
    assert rc == 0, err
    assert overall(out)[2:] == ["1.000000", "1.000000"]
    # a folder plus one overridden file
    rc, out, _ = run(
        capsys, "execute", "--data-dir", tiny_dir, "--data-questions-json", tmp_path / "other" / "q.json"
    )
    assert rc == 0


def test_execute_wrong_answer(capsys, tiny_copy):
    qs = load(tiny_copy / "questions.json")
    qs["questions"][3]["answer"] = "metal"  # really rubber
    qs["questions"][6]["answer"] = 4  # really 3
    save(tiny_copy / "questions.json", qs)
    rc, out, _ = run(capsys, "execute", "--data-dir", tiny_copy)
    assert rc == 1
    assert overall(out) == ["overall", "8", "0.750000", "0.750000"]
    assert "2 mismatch(es):" in out
    assert "question 3 (query): stored 'metal', raw 'rubber', NS-CL 'rubber'" in out
    assert "question 6 (count): stored '4', raw '3', NS-CL '3'" in out
    rc, out, _ = run(capsys, "execute", "--data-dir", tiny_copy, "--max-mismatches", "1")
    assert rc == 1
    assert "question 3 (query)" in out and "question 6" not in out and "... and 1 more" in out


def test_execute_equal_object_and_answerless_questions(capsys, tiny_copy):
    qs = load(tiny_copy / "questions.json")
    qs["questions"].append(
        {
            "image_index": 1,
            "question": "Is the yellow thing the large thing?",
            "answer": "yes",
            "program": [
                {"function": "scene"},
                {"function": "filter_color", "inputs": [0], "value_inputs": ["yellow"]},
                {"function": "unique", "inputs": [1]},
                {"function": "scene"},
                {"function": "filter_size", "inputs": [3], "value_inputs": ["large"]},
                {"function": "unique", "inputs": [4]},
                {"function": "equal_object", "inputs": [2, 5]},
            ],
        }
    )
    qs["questions"].append({"image_index": 0, "question": "Unanswered?"})
    save(tiny_copy / "questions.json", qs)
    rc, out, err = run(capsys, "execute", "--data-dir", tiny_copy)
    assert rc == 1
    assert "Traceback" not in err
    assert "skipped 1 question(s)" in out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("  question 8")]
    assert "(equal_object)" in line and "raw 'yes'" in line and "untranslatable" in line
    row = [ln for ln in out.splitlines() if ln.startswith("equal_object")][0].split()
    assert row == ["equal_object", "1", "1.000000", "0.000000"]


def test_execute_program_without_answer(capsys, tiny_copy):
    qs = load(tiny_copy / "questions.json")
    qs["questions"][0]["program"] = qs["questions"][0]["program"][:2]  # ends with filter_color
    save(tiny_copy / "questions.json", qs)
    rc, out, err = run(capsys, "execute", "--data-dir", tiny_copy)
    assert "Traceback" not in err
    assert rc == 1
    assert "question 0 (filter_color): stored '2'" in out
    assert "gives no answer" in out


def test_execute_custom_domain(capsys, tmp_path, domain):
    d = domain.to_dict()
    d["name"] = "textured"
    d["attributes"]["texture"] = {"type": "Texture", "concepts": ["striped", "plain"]}
    save(tmp_path / "textured.json", d)
    data = tmp_path / "data"
    data.mkdir()
    objs = [
        {"color": "red", "material": "metal", "shape": "cube", "size": "large", "texture": "striped"},
        {"color": "red", "material": "rubber", "shape": "sphere", "size": "small", "texture": "plain"},
    ]
    rel = {"left": [[1], []], "right": [[], [0]], "front": [[], []], "behind": [[], []]}
    save(
        data / "scenes.json",
        {"scenes": [{"image_index": 0, "image_filename": "x.png", "objects": objs, "relationships": rel}]},
    )
    program = [
        {"function": "scene"},
        {"function": "filter_texture", "inputs": [0], "value_inputs": ["plain"]},
        {"function": "unique", "inputs": [1]},
        {"function": "relate", "inputs": [2], "value_inputs": ["right"]},
        {"function": "unique", "inputs": [3]},
        {"function": "query_texture", "inputs": [4]},
    ]
    save(
        data / "questions.json",
        {"questions": [{"image_index": 0, "question": "?", "answer": "striped", "program": program}]},
    )
    rc, out, err = run(capsys, "execute", "--data-dir", data, "--domain", tmp_path / "textured.json")
    assert rc == 0, out + err
    assert overall(out) == ["overall", "1", "1.000000", "1.000000"]
    # the built-in domain does not know textures
    rc, _, err = run(capsys, "execute", "--data-dir", data)
    assert_user_error(rc, err, "execute", "questions.json", "question 0", "striped")


# --------------------------------------------------------------------------------------------- user errors
def test_error_missing_data_dir(capsys, tmp_path):
    rc, out, err = run(capsys, "execute", "--data-dir", tmp_path / "nowhere")
    assert_user_error(rc, err, "execute", str(tmp_path / "nowhere"))
    assert out == ""


def test_error_no_data_flags(capsys):
    rc, _, err = run(capsys, "execute")
    assert_user_error(rc, err, "execute", "--data-dir")


def test_error_missing_questions_file(capsys, tiny_copy):
    (tiny_copy / "questions.json").unlink()
    rc, _, err = run(capsys, "execute", "--data-dir", tiny_copy)
    assert_user_error(rc, err, "execute", str(tiny_copy / "questions.json"), "no such file")


def test_error_malformed_json(capsys, tiny_copy):
    text = (tiny_copy / "scenes.json").read_text(encoding="utf-8").splitlines()
    text[4] = text[4] + ","  # line 5: a trailing comma before the closing brace
    (tiny_copy / "scenes.json").write_text("\n".join(text), encoding="utf-8")
    rc, _, err = run(capsys, "execute", "--data-dir", tiny_copy)
    line = assert_user_error(rc, err, "execute", "malformed JSON")
    assert re.search(re.escape(str(tiny_copy / "scenes.json")) + r":6:\d+: ", line), line


def test_error_non_utf8(capsys, tiny_copy):
    raw = (tiny_copy / "questions.json").read_bytes().replace(b"How many red", b"How many r\xe9d")
    (tiny_copy / "questions.json").write_bytes(raw)
    rc, _, err = run(capsys, "execute", "--data-dir", tiny_copy)
    assert_user_error(rc, err, "execute", str(tiny_copy / "questions.json"), "UTF-8")


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (
            lambda q: q[2]["program"][5].update(function="filter_metal"),
            ["question 2", "node 5", "filter_metal"],
        ),
        (lambda q: q[2]["program"][5].update(value_inputs=["shiny"]), ["question 2", "node 5", "'shiny'"]),
        (lambda q: q[2]["program"][5].update(inputs=[9]), ["question 2", "node 5", "node 9"]),
        (lambda q: q[4].update(image_index=9), ["question 4", "image_index 9 has no scene"]),
        (lambda q: q[1].pop("question"), ["question 1", "missing required key 'question'"]),
        (
            lambda q: q[3]["program"].__setitem__(
                4, {"function": "relate", "inputs": [3], "value_inputs": ["left"]}
            ),
            ["question 3", "node 4", "relate"],
        ),
    ],
)
def test_error_bad_question(capsys, tiny_copy, edit, needles):
    qs = load(tiny_copy / "questions.json")
    edit(qs["questions"])
    save(tiny_copy / "questions.json", qs)
    rc, out, err = run(capsys, "execute", "--data-dir", tiny_copy)
    assert_user_error(rc, err, "execute", str(tiny_copy / "questions.json"), *needles)
    assert out == ""


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (lambda s: s[1].update(objects=[]), ["scene 1", "image_index 1", "empty scene"]),
        (lambda s: s[0]["objects"][2].pop("shape"), ["scene 0", "object 2", "'shape'"]),
        (lambda s: s[0]["objects"][1].update(color="pink"), ["scene 0", "object 1", "'pink'"]),
        (lambda s: s[1]["relationships"].pop("behind"), ["scene 1", "'behind'"]),
    ],
)
def test_error_bad_scene(capsys, tiny_copy, edit, needles):
    sc = load(tiny_copy / "scenes.json")
    edit(sc["scenes"])
    save(tiny_copy / "scenes.json", sc)
    rc, _, err = run(capsys, "execute", "--data-dir", tiny_copy)
    assert_user_error(rc, err, "execute", str(tiny_copy / "scenes.json"), *needles)


def test_error_unknown_domain(capsys, tiny_dir, tmp_path):
    rc, _, err = run(capsys, "execute", "--data-dir", tiny_dir, "--domain", "nosuch")
    assert_user_error(rc, err, "execute", "nosuch")
    rc, _, err = run(capsys, "execute", "--data-dir", tiny_dir, "--domain", tmp_path / "missing.json")
    assert_user_error(rc, err, "execute", "missing.json")


def test_debug_shows_traceback(tmp_path):
    from nscl.errors import DataError

    with pytest.raises(DataError):
        main(["--debug", "execute", "--data-dir", str(tmp_path / "nowhere")])


# --------------------------------------------------------------------------------------------- vocab
def test_vocab_writes_atomically(capsys, tiny_copy, domain):
    before = files_in(tiny_copy)
    rc, _, err = run(capsys, "vocab", "--data-dir", tiny_copy)
    assert rc == 0, err
    assert files_in(tiny_copy) == sorted(before + ["vocab.json"])
    v = Vocab.load(tiny_copy / "vocab.json")
    assert v.words[:4] == SPECIALS
    for w in ("how", "many", "red", "?", "cylinders", "-", "left", "behind", "cyan", "rubber"):
        assert w in v, w
    # deterministic: a second run writes the same bytes
    first = (tiny_copy / "vocab.json").read_bytes()
    assert run(capsys, "vocab", "--data-dir", tiny_copy)[0] == 0
    assert (tiny_copy / "vocab.json").read_bytes() == first
    assert files_in(tiny_copy) == sorted(before + ["vocab.json"])


def test_vocab_output_flag(capsys, tiny_dir, tmp_path):
    out = tmp_path / "deep" / "v.json"
    rc, _, _ = run(capsys, "vocab", "--data-dir", tiny_dir, "-o", out)
    assert rc == 0
    assert files_in(out.parent) == ["v.json"]
    assert Vocab.load(out).words[:4] == SPECIALS
    assert "vocab.json" not in files_in(tiny_dir)


def test_vocab_failure_writes_nothing(capsys, tiny_copy):
    raw = (tiny_copy / "questions.json").read_text(encoding="utf-8")
    (tiny_copy / "questions.json").write_text(raw[: len(raw) // 2], encoding="utf-8")
    before = files_in(tiny_copy)
    rc, _, err = run(capsys, "vocab", "--data-dir", tiny_copy)
    assert_user_error(rc, err, "vocab", str(tiny_copy / "questions.json"), "malformed JSON")
    assert files_in(tiny_copy) == before
