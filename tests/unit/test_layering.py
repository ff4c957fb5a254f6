"""One direction between rooms, checked against the working tree.

- The import-linter contract in pyproject.toml ([tool.importlinter]) holds.
- Every module of the package is in one of the contract's layers.
- Imports of streamrec modules sit at the top of modules. Inside a function
  only in the command modules the root CLI imports at every start (there they
  keep torch, ONNX Runtime, Faust and the Cassandra driver out of
  `streamrec --help`; each says its cost), and in the few places listed in
  ``MEASURED`` below.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Function-level imports kept on purpose, with the start-up cost they spare
# (bench/artifacts.py is imported by every `streamrec` start through bench/cli.py).
MEASURED = {
    ("streamrec.bench.artifacts", "streamrec.onnx.writer"): "torch, 3-6.5 s; only a bench that trains needs it",
}


def room_graph():
    spec = importlib.util.spec_from_file_location("room_graph", REPO / "tools" / "room_graph.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def source_tree(dest: Path) -> Path:
    """The working tree laid out as the installed package (pyproject package-dir), .py files only."""
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        target = dest.joinpath(*package.split("."))
        for path in (REPO / folder).rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            out = target / path.relative_to(REPO / folder)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out)
    return dest


def layer_modules() -> list[str]:
    contract = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    names = []
    for layer in contract["layers"]:
        names += [part.strip() for part in layer.replace("|", ":").split(":") if part.strip()]
    return names


def test_the_layering_contract_holds(tmp_path: Path) -> None:
    tree = source_tree(tmp_path / "src")
    # The copy is first on the path, so import-linter reads this working tree
    # whatever copy of streamrec is installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=tree, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_every_module_is_in_a_layer() -> None:
    layers = layer_modules()
    modules = room_graph().modules(PYPROJECT["tool"]["setuptools"]["package-dir"])
    outside = [m for m in modules if m != "streamrec" and not any(m == l or m.startswith(l + ".") for l in layers)]
    assert not outside, f"modules in no layer of pyproject's [tool.importlinter] contract: {outside}"


def test_streamrec_imports_are_at_module_level() -> None:
    graph = room_graph()
    _dirs, _mods, edges = graph.collect()
    commands = {dst for src, dst, _line, kind, _r, _d in edges if src == "streamrec.cli" and kind == "module"}
    found = {(src, dst) for src, dst, _line, kind, _r, _d in edges if kind == "function"}
    unexpected = sorted(
        f"{src}:{line} -> {dst}" for src, dst, line, kind, _r, _d in edges
        if kind == "function" and src not in commands and (src, dst) not in MEASURED
    )
    assert not unexpected, "import these at the top of the module (or say why not in a command module):\n" + "\n".join(unexpected)
    assert not set(MEASURED) - found, f"gone, remove from MEASURED: {sorted(set(MEASURED) - found)}"
