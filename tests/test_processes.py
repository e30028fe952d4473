"""No worker process is ever forked from a process that may run threads (lake.processes).

A child forked while another thread of its parent held a lock waits for it forever: on
Python 3.13 the corpus fixture of tests/test_ingest.py hung that way. The runtime test runs
every worker pool of the project in a child interpreter that runs a thread and whose
`os.fork` raises; the static one keeps new pools from choosing fork (or the platform's
default start method, fork on Linux before 3.14).
"""

import ast
import os
import subprocess
import sys

from conftest import write_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import os, sys, threading

tmp, shard_set = sys.argv[1], sys.argv[2]

def refuse(*args, **kwargs):
    raise RuntimeError("os.fork() in a process that runs threads")

os.fork = os.forkpty = refuse
threading.Thread(target=threading.Event().wait, daemon=True).start()  # as a loopback server or torch's pool

from ingest.run import main as ingest
from ingest.synthetic import generate
from lake.catalog import open_shard_set
from lake.processes import WorkerStart, worker_context
from shards.loader import ShardLoader

summary = generate(f"{tmp}/corpus", clips=8, meld_clips=0, classes=["Anger"], languages=["en"], workers=2)
assert summary["workers"] == 2, summary
assert ingest(["--source", "laion", "--input", f"{tmp}/corpus/laion", "--out", f"{tmp}/set", "--languages", "en",
               "--audio-encoder", "fbank", "--text-encoder", "hashing", "--decode-workers", "1"]) == 0
loader = ShardLoader(open_shard_set(shard_set), "train", 16, seed=1, num_workers=1)
for epoch in range(2):  # the persistent worker follows the epochs
    loader.set_epoch(epoch)
    assert sorted(int(r) for batch in loader for r in batch["row"]) == list(range(48)), epoch
os.environ["EMOLAKE_PROBE"] = "set after the fork server started"
with worker_context().Pool(1, WorkerStart()) as pool:
    print("worker environment:", pool.apply(os.getenv, ("EMOLAKE_PROBE",)))
"""


def test_every_worker_pool_runs_with_fork_disabled(tmp_path):
    shard_set = str(tmp_path / "loader-set")
    write_set(shard_set, {"train": [16, 16, 16], "val": [16]})
    # -W: Python >= 3.12 warns when a process forks while it runs threads (the fork server must not)
    proc = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", CHILD, str(tmp_path), shard_set],
                          cwd=REPO, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "worker environment: set after the fork server started" in proc.stdout, proc.stdout
    assert "is multi-threaded, use of fork()" not in proc.stderr, proc.stderr[-3000:]


def _calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            yield node, name, {k.arg: k.value for k in node.keywords}


def _on_default_context(func) -> bool:
    """`Pool(...)`, `mp.Pool(...)`, `multiprocessing.Process(...)`: not `ctx.Pool(...)` on a chosen context."""
    owner = getattr(func, "value", None)
    return isinstance(func, ast.Name) or (isinstance(owner, ast.Name) and owner.id in ("mp", "multiprocessing")) or (
        isinstance(owner, ast.Attribute) and owner.attr == "multiprocessing")


def _fork_choices(path: str) -> list[str]:
    """Calls that fork the caller: the fork start method, or a pool/process on the default one."""
    bad = []
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node, name, kw in _calls(tree):
        args = [a.value for a in node.args if isinstance(a, ast.Constant)]
        args += [v.value for k, v in kw.items() if k in ("method", "start_method") and isinstance(v, ast.Constant)]
        where = f"{os.path.relpath(path, REPO)}:{node.lineno}"
        if name in ("get_context", "set_start_method", "optimize") and "fork" in args:
            bad.append(f"{where}: {name}(... 'fork' ...)")
        elif name in ("fork", "forkpty") and isinstance(node.func, ast.Attribute):
            bad.append(f"{where}: os.{name}()")
        elif name == "ProcessPoolExecutor" and "mp_context" not in kw:
            bad.append(f"{where}: ProcessPoolExecutor without mp_context")
        elif name in ("Pool", "Process") and _on_default_context(node.func):
            bad.append(f"{where}: {name}() on the default start method (use lake.processes.worker_context())")
        elif name == "DataLoader" and "multiprocessing_context" not in kw:
            workers = kw.get("num_workers")
            if not (isinstance(workers, ast.Constant) and workers.value == 0):
                bad.append(f"{where}: DataLoader with workers but no multiprocessing_context")
    return bad


def test_no_code_forks_its_caller():
    bad = []
    for package in ("lake", "ingest", "shards", "trainers", "evaluation", "benchmarks", "tests"):
        for d, _, files in os.walk(os.path.join(REPO, package)):
            bad += [b for f in sorted(files) if f.endswith(".py") for b in _fork_choices(os.path.join(d, f))]
    assert not bad, "\n".join(bad)
