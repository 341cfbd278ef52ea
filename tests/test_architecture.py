"""The package's structure (ARCHITECTURE.md): every module imports on its own, the import graph has no cycle,
function-local imports of the package's own modules say why they are local, modules stay small."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "anomaly_bench"
#: modules allowed over the size limit, with the reason (ARCHITECTURE.md repeats it)
LONG_MODULES: dict[str, str] = {
    "anomaly_bench.data.phantom": "one seeded generator (408 lines): its render function draws every structure "
                                  "from one RNG stream in a fixed order; split, the order would be harder to see",
}
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """``[(imported anomaly_bench module, function-local?, line)]`` of one module (TYPE_CHECKING blocks left
    out: they never run)."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _in_type_checking(node, parents):
            continue
        local = any(isinstance(a, (ast.FunctionDef, ast.AsyncFunctionDef)) for a in _ancestors(node, parents))
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        out += [(t, local, node.lineno) for t in targets if t in MODULES and t != name]
    return out


def _ancestors(node, parents):
    while node in parents:
        node = parents[node]
        yield node


def _cycles() -> list[list[str]]:
    graph = {m: {t for t, _, _ in _imports(m)} for m in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_import_graph_has_no_cycle():
    """Top-level and function-local imports together: a cycle hidden behind a local import is still one."""
    assert _cycles() == []


def test_cycle_check_finds_a_cycle(monkeypatch):
    """The check itself works: an added edge from the errors module back to the registry closes a cycle."""
    real = _imports

    def with_back_edge(name):
        extra = [("anomaly_bench.core.registry", True, 1)] if name == "anomaly_bench.core.errors" else []
        return real(name) + extra

    monkeypatch.setattr(sys.modules[__name__], "_imports", with_back_edge)
    assert any("anomaly_bench.core.errors" in c for c in _cycles())


def test_local_imports_say_why():
    """A function-local import of the package's own modules is there for a reason (an optional dependency
    such as Ray or anomalib, or a fast ``anomaly-bench --help``): the line, or the one above it, says so with
    a comment starting ``# lazy:`` (on the import, on another import of the same run of import lines, or on
    the line just above that run)."""
    missing = []
    for m, path in MODULES.items():
        lines = path.read_text().splitlines()
        for target, local, line in _imports(m):
            if local and not _says_lazy(lines, line - 1):
                missing.append(f"{path.relative_to(PKG.parent)}:{line} imports {target}")
    assert missing == [], "function-local imports without a '# lazy:' reason:\n" + "\n".join(missing)


def _says_lazy(lines: list[str], i: int) -> bool:
    def is_import(s: str) -> bool:
        s = s.strip()
        return s.startswith(("from ", "import ")) or s.startswith(")") or (s.endswith(",") and " " not in s)

    lo = i
    while lo > 0 and is_import(lines[lo - 1]):
        lo -= 1
    hi = i
    while hi + 1 < len(lines) and is_import(lines[hi + 1]):
        hi += 1
    return any("# lazy:" in s for s in lines[max(lo - 1, 0):hi + 1])


def test_modules_stay_small():
    long = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES and _module_name(p) not in LONG_MODULES}
    assert long == {}, f"modules over {MAX_LINES} lines (split them, or list them in LONG_MODULES with why)"


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    """Each module imported first, in a fresh interpreter (the package's modules are dropped from
    ``sys.modules`` between imports, third-party ones kept for speed): an import that only works after some
    other module was imported fails here."""
    code = (
        "import importlib, sys, traceback\n"
        "failed = []\n"
        f"for name in {sorted(MODULES)!r}:\n"
        "    for k in [k for k in sys.modules if k == 'anomaly_bench' or k.startswith('anomaly_bench.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if (exc.name or '').startswith('anomaly_bench'):\n"
        "            failed.append(f'{name}: {exc!r}')\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         cwd=PKG.parent)
    assert res.returncode == 0, res.stdout + res.stderr
