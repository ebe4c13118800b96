"""The house rules that keep the code readable, checked on the source (ast; nothing is imported):
layers point down only, no import circle, no private name taken across modules, the core never imports
Gradio, no core module over 700 lines. Each failure names the modules to look at."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bt_demo", "train", "bench")
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    mods = {"app": REPO / "app.py"}
    for pkg in PACKAGES:
        for p in sorted((REPO / pkg).rglob("*.py")):
            name = ".".join(p.relative_to(REPO).with_suffix("").parts)
            mods[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return mods


MODS = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODS:
        name = name.rpartition(".")[0]
    return name or None


def _imports(mod: str, path: Path) -> list[tuple[str, str | None]]:
    """(module imported, name taken from it or None), every import in the file (lazy ones too)."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}" if base else a.name
                out.append((full, None) if full in MODS else (base, a.name))
    return out


EDGES: dict[str, set[str]] = {m: set() for m in MODS}
PRIVATE: list[str] = []
EXTERNAL: dict[str, set[str]] = {m: set() for m in MODS}
for _m, _p in MODS.items():
    for _t, _name in _imports(_m, _p):
        _r = _resolve(_t)
        if _r is None:
            EXTERNAL[_m].add(_t.split(".")[0])
        elif _r != _m:
            EDGES[_m].add(_r)
            if _name and _name.startswith("_") and not _name.startswith("__"):
                PRIVATE.append(f"{_m} imports {_r}.{_name}")


def _circles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in MODS:
        if root in index:
            continue
        work = [(root, iter(sorted(EDGES[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(EDGES[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_circle():
    assert _circles() == []


def test_no_private_name_is_imported_across_modules():
    assert sorted(set(PRIVATE)) == []


def test_the_core_never_imports_gradio_and_never_the_layers_above_it():
    bad = [m for m in MODS if m.startswith("bt_demo") and not m.startswith("bt_demo.ui") and "gradio" in EXTERNAL[m]]
    assert bad == [], "the core (bt_demo outside ui/) imports Gradio"
    up = sorted(f"{m} imports {t}" for m in MODS if m.startswith("bt_demo") for t in EDGES[m]
                if t.split(".")[0] in ("train", "bench", "app")
                or (not m.startswith("bt_demo.ui") and t.startswith("bt_demo.ui")))
    assert up == []


def test_no_core_module_is_over_700_lines():
    long = {m: n for m, p in MODS.items() if m.startswith("bt_demo")
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("bad, expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": set(), "c": {"a"}}, []),
])
def test_the_circle_finder_finds_circles(bad, expected, monkeypatch):
    monkeypatch.setitem(globals(), "MODS", dict.fromkeys(bad, None))
    monkeypatch.setitem(globals(), "EDGES", bad)
    assert _circles() == expected
