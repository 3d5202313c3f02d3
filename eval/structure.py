#!/usr/bin/env python3
"""Structure figures of the synthkit package, read from its source (nothing is imported).

    python eval/structure.py [PACKAGE_DIR] [--json]

- rooms: each top-level module and each subpackage of the package is one room; an import from one room to
  another is an arrow (module-level, function-level and TYPE_CHECKING imports all count: a lazy import that
  closes a loop is still a loop in the design).
- arrows that run back up: rooms are ordered by the condensation of the room graph (a room sits above every
  room it imports); inside a strongly connected group of rooms there is no order, so every arrow between two
  rooms of one group counts as running back up (a group of rooms is two floors that import each other).
- function-level imports: ``import``/``from`` of a synthkit module inside a function body, outside cli.py.
- module cycles: strongly connected groups of two or more modules (module-level imports only).
- function length (lines from ``def`` to the end of the body), branching (if/for/while/try statements
  plus the operands of every ``and``/``or``; nested functions count in their own right and in the outer
  one), class length.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path


def _modules(pkg: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(pkg.rglob("*.py")):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(name: str, path: Path, node: ast.ImportFrom | ast.Import, known: dict[str, Path]) -> list[str]:
    is_pkg = path.name == "__init__.py"
    targets: list[str] = []
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        if node.level:
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
    found = []
    for t in targets:
        while t and t not in known:
            t = t.rpartition(".")[0]
        if t and t != name:
            found.append(t)
    return found


def _room(mod: str) -> str:
    parts = mod.split(".")
    return ".".join(parts[:2])


def _scc(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _branching(fn: ast.AST) -> int:
    n = 0
    for node in ast.walk(fn):
        if isinstance(node, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.Try)):
            n += 1
        elif isinstance(node, ast.BoolOp):
            n += len(node.values)
    return n


def measure(pkg: Path) -> dict:
    known = _modules(pkg)
    top = pkg.name
    module_edges: dict[str, set[str]] = {m: set() for m in known}
    room_edges: dict[str, set[str]] = {}
    lazy: list[str] = []
    functions: list[tuple[int, int, str]] = []
    classes: list[tuple[int, str]] = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        rel = path.relative_to(pkg.parent)
        parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                parents[child] = node
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = _resolve(name, path, node, known)
                if not targets:
                    continue
                inside_fn = False
                p = parents.get(node)
                while p is not None:
                    if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        inside_fn = True
                        break
                    p = parents.get(p)
                for t in targets:
                    if _room(t) != _room(name):
                        room_edges.setdefault(_room(name), set()).add(_room(t))
                    # a module importing its own package's __init__ (re-exported names) runs inside the
                    # package's import anyway: not an edge of the design
                    if not inside_fn and not name.startswith(t + "."):
                        module_edges[name].add(t)
                if inside_fn and not str(rel).endswith(f"{top}/cli.py"):
                    lazy.append(f"{rel}:{node.lineno} -> {', '.join(sorted(set(targets)))}")
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                functions.append((length, _branching(node), f"{rel}:{node.lineno} {node.name}"))
            elif isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                classes.append((length, f"{rel}:{node.lineno} {node.name}"))
    for r in {_room(m) for m in known}:
        room_edges.setdefault(r, set())
    groups = [g for g in _scc(room_edges) if len(g) > 1]
    back = []
    for g in groups:
        gs = set(g)
        for a in g:
            for b in sorted(room_edges[a] & gs):
                back.append(f"{a} -> {b}")
    cycles = [g for g in _scc(module_edges) if len(g) > 1]
    functions.sort(reverse=True)
    classes.sort(reverse=True)
    return {
        "room_groups": groups,
        "arrows_back_up": back,
        "function_level_imports": lazy,
        "module_cycles": cycles,
        "longest_functions": [f"{n} lines, branching {b}: {w}" for n, b, w in functions[:5]],
        "branching_ge_15": sorted(
            [f"{b}: {w} ({n} lines)" for n, b, w in functions if b >= 15], key=lambda s: -int(s.split(":")[0])
        ),
        "largest_classes": [f"{n} lines: {w}" for n, w in classes[:5]],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("package", nargs="?", default=str(Path(__file__).resolve().parents[1] / "synthkit"))
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    m = measure(Path(args.package))
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    sections = (  # (heading, key, whether the heading counts its rows)
        ("arrows that run back up", "arrows_back_up", True),
        ("function-level imports of package modules outside cli.py", "function_level_imports", True),
        ("module import cycles", "module_cycles", True),
        ("longest functions", "longest_functions", False),
        ("functions with branching >= 15", "branching_ge_15", True),
        ("largest classes", "largest_classes", False),
    )
    for heading, key, counted in sections:
        print(f"{heading}: {len(m[key])}" if counted else f"{heading}:")
        for row in m[key]:
            print(f"  {' <-> '.join(row) if key == 'module_cycles' else row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
