"""The import rules of docs/architecture.md: the pure floor never reaches
Keras or a backend, no module but `callbacks` loads one when imported, and
the page names every module of the package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bngap"
HEAVY = ("tensorflow", "keras", "jax", "torch", "h5py")
# Floor 1 of docs/architecture.md: plain Python and numpy.
PURE = {
    "errors",
    "specs",
    "stats",
    "results",
    "gates",
    "records",
    "vocabulary",
    "jsonform",
    "audit",
    "analysis",
    "advice",
    "advice.common",
    "advice.batchnorm",
    "advice.convergence",
    "advice.shift",
    "advice.ranking",
    "advice.backends",
    "saved",
    "writing",
    "streaming",
    "npzmembers",
    "batchstream",
    "arrayfiles",
    "comparison",
    "validation",
    "modelfiles",
    "fixresult",
    "_version",
    "render",
    "render.common",
    "render.text",
    "render.markdown",
    "render.html",
    "render.htmlpage",
    "render.svg",
    "render.charts",
    "render.json",
    "render.junit",
    "render.github",
    "render.lint",
    "render.backends",
    "render.fixing",
}
RECORDS_ONLY = {"analysis": {"layertree"}}  # reads LayerNode records, never calls build_tree


def _modules() -> list[str]:
    out = []
    for p in sorted(PACKAGE.rglob("*.py")):
        parts = p.relative_to(PACKAGE).with_suffix("").parts
        out.append(
            ".".join(parts[:-1]) if parts[-1] == "__init__" and len(parts) > 1 else ".".join(parts)
        )
    return out


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(bngap modules, outside top-level packages) a module imports, at any depth."""
    path = PACKAGE / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    ours, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            if node.module:
                ours.add(".".join([*base, node.module]))
            else:
                ours.update(".".join([*base, a.name]) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            outside.add((node.module or "").split(".")[0])
        elif isinstance(node, ast.Import):
            outside.update(a.name.split(".")[0] for a in node.names)
    return ours, outside


def test_the_pure_floor_is_a_real_list_of_modules():
    assert set(_modules()) >= PURE


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_import_only_pure_modules_and_no_backend(module):
    ours, outside = _imports(module)
    assert not outside & set(HEAVY), f"{module} imports {outside & set(HEAVY)}"
    allowed = PURE | RECORDS_ONLY.get(module, set())
    assert ours <= allowed, f"{module} imports {sorted(ours - allowed)} (not on the pure floor)"


def test_importing_any_module_but_callbacks_loads_no_backend():
    modules = [m for m in _modules() if m not in ("callbacks", "__main__")]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module('bngap.' + m if m else 'bngap')\n"
        f"print(sorted(k for k in {HEAVY!r} if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_architecture_page_names_every_module():
    page = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"^\| `([\w/]+)` \|", page, flags=re.M))
    # a subpackage's __init__ is named only where it holds code of its own
    expected = {
        str(p.relative_to(PACKAGE).with_suffix(""))
        for p in PACKAGE.rglob("*.py")
        if p.relative_to(PACKAGE).parts != ("keras2", "__init__.py")
    }
    assert named == expected, (sorted(expected - named), sorted(named - expected))
