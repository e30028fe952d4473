"""Checkpoints of the previous tooling (vano04/TAMERSv2), read safely and renamed into this project's models.

Its files, recognised by their layout (no flag):
  clap_projectors.pt         {audio_proj: {fc.weight, fc.bias} or {weight, bias}, text_proj: ...}
                             (trainers.clap.load_projectors reads both)
  slm_stage3_*.pt            {model_state (or state_dict): DDP keys `module.clap.audio_proj.*`,
                             `module.clap.text_proj.*`, `prosody_lin.*`, `W_q/W_k/W_v.*`, `mlp.0.*`
                             (5d -> 1024), `mlp.3.*` (1024 -> N); optimizer_state, epoch, global_step,
                             best_val_acc, val_acc, config}; no taxonomy
  meld_slm_{A,B}_*.pt        {trainable_state: {meld_head: {0.* LayerNorm, 1.* Linear, 4.* Linear}} (A)
                             or {adapter: {weight [7, N], bias}} (B), mode, config, epoch}; the head
                             alone (`meld_head` / `adapter` may also sit at the top level)

Its SLM is this project's with the prosody branch on the CLAP layer, so every tensor has a
place here: the renaming is strict (every key used, none missing, shapes checked). What they
were trained on is known: the reference's own vectors (lake.tamers), so a converted checkpoint
carries those encoder records and the usual checks keep it off natively ingested sets.

A downloaded checkpoint is data, not code: trainers.checkpoint.read_checkpoint_file unpickles
tensors and plain containers only (torch's weights_only), plus the few harmless types the layouts hold.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from lake.errors import LakeError
from lake.tamers import LAYERS, REFERENCE, reference_encoders
from trainers.checkpoint import read_checkpoint_file


def linear_state(head: Any) -> dict | None:
    """{fc.weight, fc.bias} from a reference projector: {fc.weight, fc.bias} or bare {weight, bias}."""
    if not isinstance(head, dict):
        return None
    if "fc.weight" in head and "fc.bias" in head:
        return {"fc.weight": head["fc.weight"], "fc.bias": head["fc.bias"]}
    if "weight" in head and "bias" in head:
        return {"fc.weight": head["weight"], "fc.bias": head["bias"]}
    return None


# -- the layouts ---------------------------------------------------------------------

SLM_NAMES = (("clap.audio_proj.", "clap_audio.fc."), ("clap.text_proj.", "clap_text.fc."), ("prosody_lin.", "prosody."),
             ("W_q.", "w_q."), ("W_k.", "w_k."), ("W_v.", "w_v."), ("mlp.0.", "head.0."), ("mlp.3.", "head.3."))
MELD_NAMES = {"A": ("meld_head", (("0.", "head.0."), ("1.", "head.1."), ("4.", "head.4."))),
              "B": ("adapter", (("", "head.0."),))}


def _strip_ddp(state: dict) -> dict:
    return {(k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k): v for k, v in state.items()}


def _slm_state(obj: Any) -> dict | None:
    if not isinstance(obj, dict) or obj.get("format"):  # ours carry a format tag
        return None
    state = obj.get("model_state", obj.get("state_dict", obj))
    if not isinstance(state, dict):
        return None
    state = _strip_ddp(state)
    return state if {"prosody_lin.weight", "mlp.0.weight", "W_q.weight"} <= set(state) else None


def is_reference_slm(obj: Any) -> bool:
    return _slm_state(obj) is not None


def _meld_part(obj: Any) -> tuple[str, dict] | None:
    """(mode, the head's state dict) of a reference MELD checkpoint, or None."""
    if not isinstance(obj, dict) or obj.get("format"):
        return None
    inner = obj.get("trainable_state") if isinstance(obj.get("trainable_state"), dict) else obj
    for mode, (name, _) in MELD_NAMES.items():
        if isinstance(inner.get(name), dict):
            return mode, _strip_ddp(inner[name])
    return None


def is_reference_meld(obj: Any) -> bool:
    return _meld_part(obj) is not None


def _rename(state: dict, names, target: dict, path: str, what: str) -> dict:
    """Strict: every reference key maps to a target key of the same shape, and every target key is filled."""
    mapping = ", ".join(f"{a or '(top)'}* -> {b}*" for a, b in names)
    out, unused = {}, []
    for k, v in state.items():
        new = next((b + k[len(a):] for a, b in names if k.startswith(a)), None)
        if new is None or new not in target:
            unused.append(k)
            continue
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(target[new].shape):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise LakeError(f"{path}: reference {what} key {k} -> {new}: shape {got}, expected "
                            f"{tuple(target[new].shape)} (mapping {mapping})")
        out[new] = v.detach().clone().float()
    missing = sorted(set(target) - set(out))
    if unused or missing:
        parts = ([f"unused reference key(s) {', '.join(sorted(unused)[:6])}"] if unused else []) + \
                ([f"nothing for {', '.join(missing[:6])}"] if missing else [])
        raise LakeError(f"{path}: not a reference {what} checkpoint this project can hold: {'; '.join(parts)} "
                        f"(mapping {mapping})")
    return out


def _plain_config(cfg: Any) -> dict:
    cfg = vars(cfg) if isinstance(cfg, argparse.Namespace) else cfg
    return {str(k): (v if isinstance(v, (str, int, float, bool, type(None))) else str(v))
            for k, v in (cfg or {}).items()} if isinstance(cfg, dict) else {}


def _number(x: Any, default=None):
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def _train_state(obj: dict, epoch: int) -> dict:
    """The reference's counters in this project's `train` part (its selection was by accuracy)."""
    return {"epoch": epoch, "step": int(_number(obj.get("global_step"), 0)), "metrics": {},
            "best": {"metric": "accuracy", "value": _number(obj.get("best_val_acc")), "epoch": epoch}}


def reference_note(ckpt: dict) -> str | None:
    """How a report names a converted checkpoint ("reference-layout checkpoint (vano04/TAMERSv2 ...)")."""
    ref = ckpt.get("reference")
    if not ref:
        return None
    return f"{ref['path']}: a reference-layout checkpoint ({REFERENCE} {ref['layout']}), epoch {ckpt['train']['epoch']:03d}"


def refuse_resume(obj: Any, path: str) -> None:
    """--resume / --checkpoint on a reference file: it has no state this project's loop can continue."""
    kind = "SLM" if is_reference_slm(obj) else "MELD" if is_reference_meld(obj) else None
    if kind:
        raise LakeError(f"{path}: a reference-layout ({REFERENCE}) {kind} checkpoint; it can be evaluated or used as "
                        "--stage3-ckpt, not resumed (its optimizer and data order are not this project's): start a "
                        "new run")


# -- conversion ----------------------------------------------------------------------

def slm_checkpoint(obj: Any, path: str, taxonomy: list[str] | None = None, layer: str = LAYERS["laion"]) -> dict:
    """A reference stage-3 file as this project's SLM checkpoint dict (what trainers.slm.load_slm reads).

    `taxonomy`: the class names of the set it is used on (the file has none; the count is checked);
    None where names do not matter (the backbone of a MELD head). `layer`: the stored layer both its
    CLAP head and its prosody branch read (the reference had one).
    """
    from trainers.checkpoint import FORMAT
    from trainers.slm import build_slm

    state = _slm_state(obj)
    if state is None:
        raise LakeError(f"{path}: not a reference stage-3 checkpoint (no model_state with prosody_lin, W_q, mlp)")
    try:
        a, t, p = state["clap.audio_proj.weight"], state["clap.text_proj.weight"], state["prosody_lin.weight"]
        h0, h3 = state["mlp.0.weight"], state["mlp.3.weight"]
    except KeyError as e:
        raise LakeError(f"{path}: reference stage-3 checkpoint without {e.args[0]} (mapping "
                        + ", ".join(f"{x}* -> {y}*" for x, y in SLM_NAMES) + ")") from None
    num_classes = int(h3.shape[0])
    if taxonomy is not None and len(taxonomy) != num_classes:
        raise LakeError(f"{path}: a reference SLM with {num_classes} outputs, but the set has {len(taxonomy)} classes "
                        f"({', '.join(taxonomy[:4])}, ...); use it on a set with its {num_classes} classes in label_id "
                        "order (import with --taxonomy FILE)")
    arch = {"audio_dim": int(p.shape[1]), "text_dim": int(t.shape[1]), "proj_dim": int(a.shape[0]),
            "num_classes": num_classes, "taxonomy": list(taxonomy) if taxonomy is not None else None,
            "layers": [layer], "clap_index": 0, "prosody_index": 0, "hidden_dim": int(h0.shape[0])}
    config = _plain_config(obj.get("config")) if "model_state" in obj or "state_dict" in obj else {}
    dropout = _number(config.get("dropout"), 0.1)
    target = build_slm(arch, dropout).state_dict()
    model = _rename(state, SLM_NAMES, target, path, "stage-3")
    encoders = reference_encoders("laion", arch["audio_dim"], arch["text_dim"])
    epoch = int(_number(obj.get("epoch"), 0))
    return {"format": FORMAT, "stage": "slm", "model": model, "arch": arch, "config": {"dropout": dropout},
            "train": _train_state(obj, epoch),
            "data": {"name": f"{REFERENCE} precomputed LAION", "root": None, "fingerprint": None, "encoders": encoders,
                     "taxonomy": arch["taxonomy"], "audio_layers": [layer]},
            "clap": {"dims": {"audio": arch["audio_dim"], "text": arch["text_dim"], "proj": arch["proj_dim"]},
                     "audio_layer": layer, "data": None},
            "reference": {"path": path, "layout": "train_slm.py stage 3", "config": config}}


def meld_checkpoint(obj: Any, path: str, slm_ckpt: dict, taxonomy: list[str], layer: str = LAYERS["meld"]) -> dict:
    """A reference MELD file as this project's MELD checkpoint dict (what trainers.meld.load_meld reads).

    The file holds the head alone: `slm_ckpt` is its frozen SLM (from `slm_checkpoint`, or ours).
    `taxonomy`: the MELD set's class names (count checked); `layer`: the stored layer the SLM reads
    on that set. The head was trained on the reference's MELD features, so the checkpoint carries
    their encoder records (lake.tamers: not the space its SLM was trained in).
    """
    from trainers.checkpoint import FORMAT
    from trainers.meld import MeldHead
    from trainers.slm import build_slm

    part = _meld_part(obj)
    if part is None:
        raise LakeError(f"{path}: not a reference MELD checkpoint (no trainable_state with meld_head or adapter)")
    mode, head = part
    declared = obj.get("mode") or _plain_config(obj.get("config")).get("mode")
    if declared is not None and declared != mode:
        raise LakeError(f"{path}: says mode {declared}, but holds a mode {mode} head ({MELD_NAMES[mode][0]})")
    last = head.get("4.weight" if mode == "A" else "weight")
    if not isinstance(last, torch.Tensor):
        raise LakeError(f"{path}: reference MELD {mode} head without its last layer's weight")
    if len(taxonomy) != last.shape[0]:
        raise LakeError(f"{path}: a MELD head with {last.shape[0]} outputs, but the set has {len(taxonomy)} classes")
    slm_arch = {**slm_ckpt["arch"], "layers": [layer]}
    hidden = int(head["1.weight"].shape[0]) if mode == "A" and isinstance(head.get("1.weight"), torch.Tensor) else 1024
    model = MeldHead(build_slm(slm_arch), mode, len(taxonomy), hidden)
    target = {k: v for k, v in model.state_dict().items() if not k.startswith("slm.")}
    if mode == "B" and last.shape[1] != slm_arch["num_classes"]:
        raise LakeError(f"{path}: a mode B adapter from {last.shape[1]} SLM logits, but the SLM has "
                        f"{slm_arch['num_classes']}: not the stage-3 checkpoint it was trained on")
    state = {**{f"slm.{k}": v for k, v in slm_ckpt["model"].items()},
             **_rename(head, MELD_NAMES[mode][1], target, path, f"MELD {mode}")}
    config = _plain_config(obj.get("config"))
    epoch = int(_number(obj.get("epoch"), 0))
    encoders = reference_encoders("meld", slm_arch["audio_dim"], slm_arch["text_dim"])
    return {"format": FORMAT, "stage": "meld", "model": state,
            "arch": {"mode": mode, "num_classes": len(taxonomy), "taxonomy": list(taxonomy), "hidden_dim": hidden,
                     "slm_arch": slm_arch},
            "config": {"dropout": 0.2}, "train": _train_state(obj, epoch),
            "data": {"name": f"{REFERENCE} MELD features", "root": None, "fingerprint": None, "encoders": encoders,
                     "taxonomy": list(taxonomy), "audio_layers": [layer]},
            "slm": {"path": slm_ckpt.get("reference", {}).get("path"), "data": slm_ckpt["data"]},
            "reference": {"path": path, "layout": f"meld_train_slm.py mode {mode}", "config": config}}


def load_reference_slm(path: str, taxonomy: list[str] | None = None, layer: str = LAYERS["laion"], obj: Any = None):
    """(ProsodySLM in eval mode, its checkpoint dict) from a reference stage-3 file."""
    from trainers.slm import build_slm

    ckpt = slm_checkpoint(read_checkpoint_file(path) if obj is None else obj, path, taxonomy, layer)
    model = build_slm(ckpt["arch"], ckpt["config"]["dropout"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def load_reference_meld(path: str, slm_ckpt: dict, taxonomy: list[str], layer: str = LAYERS["meld"], obj: Any = None):
    """(MeldHead in eval mode, its checkpoint dict) from a reference MELD file and its SLM's checkpoint dict."""
    from trainers.meld import MeldHead
    from trainers.slm import build_slm

    ckpt = meld_checkpoint(read_checkpoint_file(path) if obj is None else obj, path, slm_ckpt, taxonomy, layer)
    arch = ckpt["arch"]
    model = MeldHead(build_slm(arch["slm_arch"]), arch["mode"], arch["num_classes"], arch["hidden_dim"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt
