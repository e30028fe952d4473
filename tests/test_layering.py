"""Data flows one way: lake <- shards <- ingest / trainers <- evaluation <- lake.demo (nothing imports the demo)."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOWED = {
    "lake": {"lake"},
    "shards": {"lake", "shards"},
    "ingest": {"lake", "shards", "ingest"},
    "trainers": {"lake", "shards", "trainers"},
    "evaluation": {"lake", "shards", "ingest", "trainers", "evaluation"},
    "benchmarks": {"lake", "shards", "ingest", "trainers", "evaluation", "benchmarks"},
}


def _imports(path):
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_package_imports_from_its_right():
    bad = []
    for package, allowed in ALLOWED.items():
        for d, _, files in os.walk(os.path.join(REPO, package)):
            for f in files:
                if not f.endswith(".py"):
                    continue
                path = os.path.join(d, f)
                rel = os.path.relpath(path, REPO)
                for mod in _imports(path):
                    top = mod.split(".")[0]
                    if rel == os.path.join("lake", "demo.py") or rel == os.path.join("lake", "__main__.py"):
                        continue  # the orchestrator sits above everything
                    if top in ALLOWED and top not in allowed:
                        bad.append(f"{rel} imports {mod}")
                    if mod.startswith("lake.demo"):
                        bad.append(f"{rel} imports the demo")
    assert bad == []
