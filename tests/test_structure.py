"""The shape of the code: no import circle, dependencies visible at the top, short functions, one reader of
checkpoint files, one owner of the block format. Read from the source, nothing imported."""

from __future__ import annotations

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("lake", "ingest", "shards", "trainers", "evaluation")
MAX_FUNCTION_LINES = 60
MAX_LOCAL_IMPORTS = 15
LONG_FUNCTIONS_ALLOWED = ("ingest/synthetic/",)  # the synthetic corpus generator's voice and layouts


def _sources():
    for package in PACKAGES:
        for d, _, files in os.walk(os.path.join(REPO, package)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    rel = os.path.relpath(path, REPO)
                    yield rel, ast.parse(open(path, encoding="utf-8").read()), open(path, encoding="utf-8").read()


def _module(rel: str) -> str:
    name = rel[:-3].replace(os.sep, ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


MODULES = {_module(rel) for rel, _, _ in _sources()}


def _targets(node, package: str) -> list[str]:
    """The project modules an import statement loads (a `from pkg import name` naming a submodule loads it)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif node.level:  # relative: resolve against the importing module's package
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        mod = f"{base}.{node.module}" if node.module else base
        names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
    else:
        names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                 for a in node.names]
    return [n for n in names if n in MODULES]


def _imports(tree: ast.Module, package: str):
    """(import node, is it inside a function, its targets) for every import of a project module."""
    inside: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn) if n is not fn)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            targets = _targets(node, package)
            if targets:
                yield node, id(node) in inside, targets


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for rel, tree, _ in _sources():
        name = _module(rel)
        package = name if rel.endswith("__init__.py") else name.rsplit(".", 1)[0]
        graph[name] = {t for _, _, targets in _imports(tree, package) for t in targets if t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
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
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_among_the_project_modules():
    assert _cycles(_graph()) == []


def test_the_circle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_of_project_modules_are_few_and_say_why():
    local, silent = [], []
    for rel, tree, text in _sources():
        lines = text.splitlines()
        name = _module(rel)
        package = name if rel.endswith("__init__.py") else name.rsplit(".", 1)[0]
        for node, in_function, _ in _imports(tree, package):
            if not in_function:
                continue
            where = f"{rel}:{node.lineno}"
            local.append(where)
            around = lines[node.lineno - 1] + (lines[node.lineno - 2] if node.lineno > 1 else "")
            if "#" not in around:
                silent.append(where)
    assert silent == [], "function-level imports without a comment giving the reason"
    assert len(local) <= MAX_LOCAL_IMPORTS, local


def test_no_function_longer_than_sixty_lines():
    long = []
    for rel, tree, _ in _sources():
        if rel.replace(os.sep, "/").startswith(LONG_FUNCTIONS_ALLOWED):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


def test_checkpoint_files_are_read_in_one_module():
    readers = [rel for rel, _, text in _sources() if "torch.load(" in text]
    assert readers == [os.path.join("trainers", "checkpoint.py")]
