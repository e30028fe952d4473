"""Checkpoints of the previous tooling (vano04/TAMERSv2): their layouts, told apart and renamed into this
project's checkpoint format.

Its files, recognised by their layout (no flag):
  clap_projectors.pt         {audio_proj: {fc.weight, fc.bias} or {weight, bias}, text_proj: ...}
                             (`linear_state` reads both; trainers.clap turns them into a CLAP checkpoint)
  slm_stage3_*.pt            {model_state (or state_dict): DDP keys `module.clap.audio_proj.*`,
                             `module.clap.text_proj.*`, `prosody_lin.*`, `W_q/W_k/W_v.*`, `mlp.0.*`
                             (5d -> 1024), `mlp.3.*` (1024 -> N); optimizer_state, epoch, global_step,
                             best_val_acc, val_acc, config}; no taxonomy
  meld_slm_{A,B}_*.pt        {trainable_state: {meld_head: {0.* LayerNorm, 1.* Linear, 4.* Linear}} (A)
                             or {adapter: {weight [7, N], bias}} (B), mode, config, epoch}; the head
                             alone (`meld_head` / `adapter` may also sit at the top level)

Its SLM is this project's with the prosody branch on the CLAP layer, so every tensor has a
place here: the renaming is strict (every key used, none missing, shapes checked against what
the stage's model of that shape holds, which the stage passes in as `target_of(arch)`). What they
were trained on is known: the reference's own vectors (lake.tamers), so a converted checkpoint
carries those encoder records and the usual checks keep it off natively ingested sets.

This module knows layouts only and imports no stage: the stages (trainers.slm, trainers.meld)
call it when they read a file (trainers.models is the one door). A downloaded checkpoint is data,
not code: trainers.checkpoint.read_checkpoint_file unpickles tensors and plain containers only.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

import torch

from lake.errors import LakeError
from lake.tamers import LAYERS, REFERENCE, reference_encoders
from trainers.checkpoint import stage_checkpoint

TargetOf = Callable[[dict], dict]
"""arch -> the state dict a freshly built model of that arch holds (what a renamed file must fill)."""


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


def is_projectors(obj: Any) -> bool:
    """CLAP projectors: ours (`python -m trainers.clap export`) or the reference's; both hold two linear heads."""
    return isinstance(obj, dict) and all(linear_state(obj.get(k)) for k in ("audio_proj", "text_proj"))


def layout_name(obj: Any) -> str | None:
    """What a loaded file is, in words ("reference-layout SLM checkpoint", ...), for a message; None: unknown."""
    if isinstance(obj, dict) and obj.get("format") and obj.get("stage"):
        return f"{obj['stage']} checkpoint"
    if is_projectors(obj):
        return "CLAP projector file"
    for kind, test in (("SLM", is_reference_slm), ("MELD", is_reference_meld)):
        if test(obj):
            return f"reference-layout ({REFERENCE}) {kind} checkpoint"
    return None


def refuse_resume(obj: Any, path: str) -> None:
    """--resume / --checkpoint on a reference file: it has no state this project's loop can continue."""
    kind = "SLM" if is_reference_slm(obj) else "MELD" if is_reference_meld(obj) else None
    if kind:
        raise LakeError(f"{path}: a reference-layout ({REFERENCE}) {kind} checkpoint; it can be evaluated or used as "
                        "--stage3-ckpt, not resumed (its optimizer and data order are not this project's): start a "
                        "new run")


def _data(name: str, encoders: dict, taxonomy, layer: str) -> dict:
    return {"name": f"{REFERENCE} {name}", "root": None, "fingerprint": None, "encoders": encoders,
            "taxonomy": taxonomy, "audio_layers": [layer]}


# -- conversion ----------------------------------------------------------------------

def slm_checkpoint(obj: Any, path: str, target_of: TargetOf, taxonomy: list[str] | None = None,
                   layer: str = LAYERS["laion"]) -> dict:
    """A reference stage-3 file as this project's SLM checkpoint dict.

    `taxonomy`: the class names of the set it is used on (the file has none; the count is checked);
    None where names do not matter (the backbone of a MELD head). `layer`: the stored layer both its
    CLAP head and its prosody branch read (the reference had one).
    """
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
    model = _rename(state, SLM_NAMES, target_of(arch), path, "stage-3")
    encoders = reference_encoders("laion", arch["audio_dim"], arch["text_dim"])
    return stage_checkpoint(
        stage="slm", arch=arch, config={"dropout": _number(config.get("dropout"), 0.1)},
        data=_data("precomputed LAION", encoders, arch["taxonomy"], layer), model=model,
        train=_train_state(obj, int(_number(obj.get("epoch"), 0))),
        clap={"dims": {"audio": arch["audio_dim"], "text": arch["text_dim"], "proj": arch["proj_dim"]},
              "audio_layer": layer, "data": None},
        reference={"path": path, "layout": "train_slm.py stage 3", "config": config})


def meld_checkpoint(obj: Any, path: str, slm_ckpt: dict, taxonomy: list[str], target_of: TargetOf,
                    layer: str = LAYERS["meld"]) -> dict:
    """A reference MELD file as this project's MELD checkpoint dict.

    The file holds the head alone: `slm_ckpt` is its frozen SLM (a converted reference one, or ours);
    `target_of(arch)` is the state dict of a MELD model of that arch (the SLM's keys included).
    `taxonomy`: the MELD set's class names (count checked); `layer`: the stored layer the SLM reads
    on that set. The head was trained on the reference's MELD features, so the checkpoint carries
    their encoder records (lake.tamers: not the space its SLM was trained in).
    """
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
    if mode == "B" and last.shape[1] != slm_arch["num_classes"]:
        raise LakeError(f"{path}: a mode B adapter from {last.shape[1]} SLM logits, but the SLM has "
                        f"{slm_arch['num_classes']}: not the stage-3 checkpoint it was trained on")
    hidden = int(head["1.weight"].shape[0]) if mode == "A" and isinstance(head.get("1.weight"), torch.Tensor) else 1024
    arch = {"mode": mode, "num_classes": len(taxonomy), "taxonomy": list(taxonomy), "hidden_dim": hidden,
            "slm_arch": slm_arch}
    target = {k: v for k, v in target_of(arch).items() if not k.startswith("slm.")}
    model = {**{f"slm.{k}": v for k, v in slm_ckpt["model"].items()},
             **_rename(head, MELD_NAMES[mode][1], target, path, f"MELD {mode}")}
    encoders = reference_encoders("meld", slm_arch["audio_dim"], slm_arch["text_dim"])
    return stage_checkpoint(
        stage="meld", arch=arch, config={"dropout": 0.2}, data=_data("MELD features", encoders, list(taxonomy), layer),
        model=model, train=_train_state(obj, int(_number(obj.get("epoch"), 0))),
        slm={"path": slm_ckpt.get("reference", {}).get("path"), "data": slm_ckpt["data"]},
        reference={"path": path, "layout": f"meld_train_slm.py mode {mode}", "config": _plain_config(obj.get("config"))})
