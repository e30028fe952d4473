"""Loading frozen models from the hub or a local directory, with one clear error.

A model is a hub id (`org/name`) or a local directory (e.g. written by `hf download ID
--local-dir DIR`). Load failures (no network, a gated model, a missing folder) become
one LakeError that says what to run, and the revision actually loaded is recorded so
a manifest pins it.
"""

from __future__ import annotations

import os
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

from lake.errors import LakeError

_HEX40 = re.compile(r"^[0-9a-f]{40}$")


# ---------------------------------------------------------------------------------------------

def looks_like_path(ref: str) -> bool:
    """A local directory (existing, or written like a path) rather than a hub id `org/name`."""
    return (os.path.exists(ref) or ref.startswith(("/", "./", "../", "~", "."))
            or ref.count("/") > 1 or "\\" in ref or ref.endswith("/"))


def check_local_dir(ref: str, what: str, default_id: str, option: str) -> None:
    """Raise a LakeError if `ref` is meant as a local model directory but is not one. `option` is the
    `python -m ingest` flag that sets it (the encoder keyword is its last word: --audio-model -> model=)."""
    if not looks_like_path(ref):
        return
    path = Path(ref).expanduser()
    if not path.exists():
        raise LakeError(f"no {what} directory at {ref}. Download it there with "
                        f"`hf download {default_id} --local-dir {ref}`, or pass the hub id "
                        f"({option} {default_id}) on a machine that has it in its Hugging Face cache")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise LakeError(f"{ref} is not a {what} directory (no config.json in it). Point {option} at the folder "
                        f"written by `hf download {default_id} --local-dir DIR`")


def hub_load_error(exc: BaseException, what: str, ref: str, hub_id: str, revision: str | None, option: str,
                   licence: str = "") -> LakeError:
    """Turn a failed `from_pretrained` / `SentenceTransformer` load of `ref` (hub id or local dir;
    `hub_id` is what `hf download` would fetch for it) into one message saying what to run."""
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    names = {type(x).__name__ for x in chain}
    text = " ".join(str(x) for x in chain).lower()
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    rev = f" --revision {revision}" if revision else ""
    local = f"or `hf download {hub_id}{rev} --local-dir DIR` and pass {option} DIR"
    if "GatedRepoError" in names or "gated" in text or " 401" in text or " 403" in text or "unauthorized" in text:
        accept = licence or f"the model's licence at https://huggingface.co/{hub_id}"
        return LakeError(f"cannot load the {what} {ref!r}: access is gated or unauthorised. Run `hf auth login` "
                         f"with a token whose account has accepted {accept}, then `hf download {hub_id}{rev}`; "
                         f"{local}")
    if "RevisionNotFoundError" in names or "not a valid git identifier" in text:
        return LakeError(f"cannot load the {what} {ref!r}: revision {revision!r} does not exist; see "
                         f"https://huggingface.co/{hub_id}/commits/main for valid commits")
    if looks_like_path(ref):
        return LakeError(f"cannot load the {what} from the directory {ref}: {first}. It looks incomplete: "
                         f"download it again with `hf download {hub_id}{rev} --local-dir {ref}`")
    offline = ("LocalEntryNotFoundError" in names or "couldn't connect" in text or "offline" in text
               or "connection" in text)
    why = ("it is not in this machine's Hugging Face cache and the hub cannot be reached (or HF_HUB_OFFLINE=1)"
           if offline else first)
    return LakeError(f"cannot load the {what} {ref!r} (no local directory of that name either): {why}. "
                     f"Run `hf download {hub_id}{rev}` (on a machine that reaches the hub, then copy its Hugging "
                     f"Face cache here; gated models need `hf auth login` first), {local}")


def loaded_revision(config: Any, ref: str, requested: str | None) -> str | None:
    """The commit actually loaded: transformers' `_commit_hash` (hub cache), else the commit
    `hf download --local-dir` recorded in the directory, else a `snapshots/<sha>` path, else the
    requested revision (None for a plain local directory)."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    path = Path(ref).expanduser()
    meta = path / ".cache" / "huggingface" / "download" / "config.json.metadata"
    if meta.is_file():
        first = meta.read_text().splitlines()[:1]
        if first and _HEX40.match(first[0].strip()):
            return first[0].strip()
    parts = path.resolve().parts if path.exists() else ()
    for a, b in pairwise(parts):
        if a == "snapshots" and _HEX40.match(b):
            return b
    return requested
