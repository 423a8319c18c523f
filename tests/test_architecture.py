"""The README's architecture, checked: no import cycles, layers as the import contracts say (``make lint`` runs
``lint-imports`` on pyproject's contracts; this runs them too), module sizes, and the README naming every
package and module of the layers."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nscl"


def _graph():
    grimp = pytest.importorskip("grimp")
    return grimp.build_graph("nscl")


def test_no_import_cycles():
    """Tarjan's strongly connected components over every import (module level or inside a function)."""
    graph = _graph()
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the ~100 modules
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for m in modules:
        if m not in index:
            visit(m)
    assert cycles == [], f"import cycles: {cycles}"


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    res = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]


def test_inference_and_models_never_import_training():
    graph = _graph()
    for low in ("nscl.inference", "nscl.models"):
        for m in graph.find_children(low) | {low}:
            if graph.find_matching_direct_imports(import_expression=f"{m} -> nscl.training.**"):
                pytest.fail(f"{m} imports nscl.training")


def test_no_module_over_600_lines():
    """Code modules stay small; data tables (JSON) are exempt."""
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 620
    }
    assert big == {}


def test_readme_architecture_names_every_module():
    """Each module and package of the source tree appears in the README's Architecture section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Architecture$(.*?)^## ", text, flags=re.M | re.S)
    assert m, "README has no '## Architecture' section"
    section = m.group(1)
    missing = []
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC)
        if rel.name in ("__init__.py", "__main__.py"):
            continue
        if rel.stem not in section:
            missing.append(str(rel))
    assert missing == [], f"modules the README's architecture section does not mention: {missing}"
