#!/usr/bin/env python3
"""Room import graph of streamrec, read from the source with `ast` (nothing is imported).

Run from the repository root:  python3 tools/room_graph.py [--by folder|layer] [--detail]

A "room" is a top-level folder mapped under the installed package
(pyproject.toml, [tool.setuptools] package-dir). ``--by layer`` (the default)
splits ``core/`` in two, as the layering contract does: ``core`` (config,
errors) at the bottom and ``entry`` (``streamrec.cli``, ``__main__``,
``streamrec.demo``) at the top. Prints, per room pair, the number of import
statements of streamrec modules at module level and inside functions (one
per imported module per statement), the function-level count per room, and
the cycles between rooms. Imports under ``if TYPE_CHECKING:`` are counted
apart (they never run, but import-linter sees them).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The root package's own modules that sit on top of every room.
ENTRY_MODULES = ("streamrec.cli", "streamrec.__main__", "streamrec.demo")


def package_dirs() -> dict[str, str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["tool"]["setuptools"]["package-dir"]


def room_of(module: str, rooms: dict[str, str]) -> str:
    """Longest mapped package that prefixes `module`, named by its folder."""
    best = ""
    for pkg in rooms:
        if (module == pkg or module.startswith(pkg + ".")) and len(pkg) > len(best):
            best = pkg
    return rooms[best] if best else "?"


def modules(pkgdirs: dict[str, str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, folder in pkgdirs.items():
        base = ROOT / folder
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("")
            # a sub-folder that is itself a mapped room belongs to that room
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([pkg, *parts])
            if room_of(name, {p: f for p, f in pkgdirs.items()}) != folder:
                continue
            out[name] = path
    return out


class Visitor(ast.NodeVisitor):
    def __init__(self, module: str, is_pkg: bool):
        self.module = module
        self.is_pkg = is_pkg
        self.depth = 0  # inside a function
        self.type_checking = 0
        self.found: list[tuple[str, int, str]] = []  # (target, line, kind)

    def _kind(self) -> str:
        if self.type_checking:
            return "type-checking"
        return "function" if self.depth else "module"

    def visit_FunctionDef(self, node):  # noqa: N802
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_If(self, node):  # noqa: N802
        test = ast.unparse(node.test)
        if test in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            self.type_checking += 1
            for n in node.body:
                self.visit(n)
            self.type_checking -= 1
            for n in node.orelse:
                self.visit(n)
        else:
            self.generic_visit(node)

    def visit_Import(self, node):  # noqa: N802
        for alias in node.names:
            if alias.name.split(".")[0] == "streamrec":
                self.found.append((alias.name, node.lineno, self._kind()))

    def visit_ImportFrom(self, node):  # noqa: N802
        if node.level:
            base = self.module.split(".")
            if not self.is_pkg:
                base = base[:-1]
            base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.split(".")[0] != "streamrec":
            return
        self.found.append((target, node.lineno, self._kind()))


def layer_room(module: str, pkgdirs: dict[str, str]) -> str:
    if module in ENTRY_MODULES:
        return "entry"
    return room_of(module, pkgdirs)


def collect(by: str = "layer"):
    """Every import of a streamrec module: (src, dst, line, kind, src room, dst room), one per statement and module."""
    pkgdirs = package_dirs()
    mods = modules(pkgdirs)
    room = (lambda m: layer_room(m, pkgdirs)) if by == "layer" else (lambda m: room_of(m, pkgdirs))
    edges = []
    for name, path in sorted(mods.items()):
        v = Visitor(name, path.name == "__init__.py")
        tree = ast.parse(path.read_text(), str(path))
        v.visit(tree)
        names_at: dict[int, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                names_at.setdefault(node.lineno, []).extend(a.name for a in node.names)
        seen = set()
        for target, line, kind in v.found:
            # `from streamrec.x import y` names module streamrec.x.y when y is one
            subs = [f"{target}.{n}" for n in names_at.get(line, ()) if f"{target}.{n}" in mods]
            for dst in subs or [target]:
                if (dst, line) in seen:
                    continue
                seen.add((dst, line))
                edges.append((name, dst, line, kind, room(name), room(dst)))
    return pkgdirs, mods, edges


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def main(argv: list[str]) -> int:
    detail = "--detail" in argv
    by = argv[argv.index("--by") + 1] if "--by" in argv else "layer"
    pkgdirs, mods, edges = collect(by)
    rooms = sorted({e[4] for e in edges} | {e[5] for e in edges})
    pair: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    func_per_room: dict[str, int] = defaultdict(int)
    func_total = 0
    for src, dst, line, kind, sr, dr in edges:
        if sr != dr:
            pair[(sr, dr)][kind] += 1
        if kind == "function":
            func_per_room[sr] += 1
            func_total += 1

    print(f"rooms by {by}; modules: {len(mods)}; imports of streamrec modules: {len(edges)}")
    print()
    print("room -> room            module  function  type-checking")
    for (sr, dr), kinds in sorted(pair.items()):
        print(f"{sr:>8} -> {dr:<10} {kinds['module']:>7} {kinds['function']:>9} {kinds['type-checking']:>14}")
    print()
    print(f"function-level imports of streamrec modules: {func_total} (all rooms, incl. same-room)")
    for r in rooms:
        print(f"  {r:<8} {func_per_room.get(r, 0)}")
    print()
    for label, kinds in (("runtime (module + function)", {"module", "function"}),
                         ("module level only", {"module"})):
        graph: dict[str, set[str]] = defaultdict(set)
        for (sr, dr), k in pair.items():
            if any(k[x] for x in kinds):
                graph[sr].add(dr)
        cyc = cycles(graph)
        twos = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})
        print(f"cycles between rooms, {label}: {len(cyc)} strongly connected group(s)")
        for c in cyc:
            print("  {" + ", ".join(c) + "}")
        print(f"  two-way pairs: {', '.join(a + '<->' + b for a, b in twos) or 'none'}")
    if detail:
        print()
        print("cross-room and function-level imports:")
        for src, dst, line, kind, sr, dr in edges:
            if sr != dr or kind == "function":
                print(f"  {kind:<13} {src}:{line} -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
