"""`auristream`: WavCoch cochlear tokens -> AuriStream hidden states, masked mean per layer.

Pipeline for a batch of 16 kHz mono waveforms of any lengths:

1. WavCoch (`TuKoResearch/WavCochV8192`, a remote-code *model*) turns float32 (B, 1, T) audio into
   token ids (B, T // hop), hop = 80 samples (200 tokens/s). It returns no lengths or mask, so
   clips are zero-padded to the batch's longest and each clip keeps its own first n // hop
   tokens. Clips are tokenised in batches of similar length (sorted), in fp32 always: the
   tokens are discrete and a bf16 quantiser could flip bits.
2. Each clip's tokens are cut into windows of `config.seq_len` (4096 = ~20 s). No duration cut:
   a long clip is several windows, pooled together.
3. Windows run through AuriStream (`model(seq=ids, output_hidden_states=True)`, or `input_ids=`
   for the AuriStream-base generation, see below) in batches of similar length (sorted, at
   most `max_tokens_per_batch` padded tokens each), right-padded.
   The model is causal, so padding after a window's last token cannot change its valid
   positions.
4. Per stored layer: the mean over the clip's valid tokens across all of its windows (a sum per
   window, added up per clip, divided by the clip's token count). Padding is never counted, so
   a clip's embedding does not depend on its batch-mates.

Layers: `h0` (token embeddings) ... `h{n_layer}` (last block, before the final norm), plus
`final_norm` = the model's final RMSNorm `ln_f` applied per token to `h{n_layer}` (the
representation the model's `coch_head` reads; the raw last layer is close to collapsed).
`--audio-layers last` means `h{n_layer}`, what the reference run stored.

Two generations of AuriStream remote code exist (DESIGN.md, Encoders), told apart once at load
by where the blocks sit: the librilight checkpoints' `AuriStream` keeps them in
`transformer.{h, ln_f}` and takes `seq=`; the newer `AuriStreamModel` (shared code of
`TuKoResearch/AuriStream-base`) holds `h` / `ln_f` at the top level and takes `input_ids=`, some
with multi-token prediction heads, which the encoder never reads. Both return n_layer + 1
`hidden_states`. Anything else is refused at load, naming what the model has.

On CUDA the transformer runs under bf16 autocast (weights stay fp32); on CPU in fp32. The hub
ids, the revisions actually loaded and the compute dtype go into `info()` for the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ingest.encoders.base import SAMPLE_RATE, AudioEncoder, record_layers
from ingest.encoders.compute import autocast, autocast_dtype, dtype_name, masked_sums, output_field, to_device
from ingest.encoders.hub import check_local_dir, hub_load_error, loaded_revision, looks_like_path
from lake.errors import LakeError
from lake.layers import resolve_layers

DEFAULT_MODEL = "TuKoResearch/AuriStream100M_RoPE_librilight"
DEFAULT_TOKENIZER = "TuKoResearch/WavCochV8192"
DEFAULT_HOP = 80  # WavCoch: 5 ms per token


@dataclass(frozen=True)
class Layout:
    """Where one AuriStream code generation keeps what the encoder uses."""

    generation: str              # recorded in the manifest's encoder config
    blocks: torch.nn.ModuleList  # the n_layer transformer blocks (`hidden_states[1:]` are their outputs)
    final_norm: torch.nn.Module  # the RMSNorm the token head reads
    final_norm_name: str         # as the manifest's config names it
    input_name: str              # forward's keyword for the token ids


def detect_layout(model: torch.nn.Module, model_id: str) -> Layout:
    """The librilight `AuriStream` (`transformer.h`, `transformer.ln_f`, `seq=`) or the AuriStream-base
    `AuriStreamModel` (`h`, `ln_f`, `input_ids=`); a LakeError naming what was found otherwise."""
    trunk = getattr(model, "transformer", None)
    for owner, prefix, generation, input_name in ((trunk, "transformer.", "librilight", "seq"),
                                                  (model, "", "auristream-base", "input_ids")):
        blocks, norm = getattr(owner, "h", None), getattr(owner, "ln_f", None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) and isinstance(norm, torch.nn.Module):
            return Layout(generation, blocks, norm, prefix + "ln_f", input_name)
    found = [name for name, _ in model.named_children()]
    if isinstance(trunk, torch.nn.Module):
        found += [f"transformer.{name}" for name, _ in trunk.named_children()]
    raise LakeError(f"AuriStream model {model_id!r} ({type(model).__name__}) has neither transformer.h/"
                    f"transformer.ln_f (librilight AuriStream) nor h/ln_f (AuriStream-base AuriStreamModel); "
                    f"found: {', '.join(found) or 'no submodules'}. Point --audio-model at an AuriStream checkpoint")


# ---------------------------------------------------------------------------------------------


class AuriStreamEncoder(AudioEncoder):
    name = "auristream"

    def __init__(self, device: str = "cpu", layers: str = "all", model: str = DEFAULT_MODEL,
                 tokenizer: str = DEFAULT_TOKENIZER, model_revision: str | None = None,
                 tokenizer_revision: str | None = None, dtype: str = "auto", max_tokens_per_batch: int = 32768):
        """`model` / `tokenizer`: hub ids or local directories (remote code, `trust_remote_code=True`).
        `dtype`: auto (bf16 autocast on CUDA, fp32 on CPU), fp32 or bf16. `max_tokens_per_batch`:
        padded tokens per forward (windows x longest window); also bounds tokeniser batches
        (x hop samples)."""
        self.device = torch.device(device)
        self.model_id, self.tokenizer_id = str(model), str(tokenizer)
        self.autocast_dtype = autocast_dtype(dtype, self.device, "auristream")
        self.max_tokens_per_batch = int(max_tokens_per_batch)
        if self.max_tokens_per_batch < 1:
            raise LakeError("auristream: max_tokens_per_batch must be at least 1")

        self.tokenizer = self._load(self.tokenizer_id, tokenizer_revision, "WavCoch tokenizer", DEFAULT_TOKENIZER,
                                    "--audio-tokenizer")
        self.model = self._load(self.model_id, model_revision, "AuriStream model", DEFAULT_MODEL, "--audio-model")
        self.model_revision = loaded_revision(self.model.config, self.model_id, model_revision)
        self.tokenizer_revision = loaded_revision(self.tokenizer.config, self.tokenizer_id, tokenizer_revision)
        self.revision = self.model_revision

        self.layout = detect_layout(self.model, self.model_id)
        cfg = self.model.config
        self.n_layer, self.dim = len(self.layout.blocks), int(cfg.n_embd)
        # every librilight config.json seen sets seq_len (4096 = the trained context); default to it if not
        self.seq_len = int(getattr(cfg, "seq_len", None) or 4096)
        self.hop = int(getattr(self.tokenizer.config, "hop_length", None) or DEFAULT_HOP)
        # shortest input the tokeniser is given (its analysis window); padding past a clip's end is zeros
        self.min_samples = max(self.hop, int(getattr(self.tokenizer.config, "window_size", 0) or 0))
        names = [f"h{i}" for i in range(self.n_layer + 1)] + ["final_norm"]
        self.layers = resolve_layers(layers, names)
        self._hidden_index = [int(n[1:]) if n != "final_norm" else -1 for n in self.layers]
        self._block_params = sum(p.numel() for p in self.layout.blocks.parameters())

    @classmethod
    def build(cls, name, device="cpu", layers="all", **options):
        if name.startswith("auristream:"):  # auristream:ID_OR_DIR picks another AuriStream checkpoint
            options.setdefault("model", name.split(":", 1)[1])
        return cls(device=device, layers=layers, **options)

    @classmethod
    def from_config(cls, name, cfg, device):
        """Reads --audio-model, --audio-tokenizer, --audio-model-revision, --audio-layers."""
        options = {k: v for k, v in (("model", cfg.audio_model), ("tokenizer", cfg.audio_tokenizer),
                                     ("model_revision", cfg.audio_model_revision)) if v}
        return cls.build(name, device=device, layers=cfg.audio_layers, **options)

    @classmethod
    def from_record(cls, record, device="cpu", model: str = "", tokenizer: str = "", **overrides):
        """The recorded models at their recorded revisions, unless `model` / `tokenizer` name local copies."""
        recorded = record.get("config", {})
        options = {"model": model or recorded.get("model"), "tokenizer": tokenizer or recorded.get("tokenizer")}
        if not model and recorded.get("model_revision"):
            options["model_revision"] = recorded["model_revision"]
        if not tokenizer and recorded.get("tokenizer_revision"):
            options["tokenizer_revision"] = recorded["tokenizer_revision"]
        return cls.build(record["id"], device=device, layers=record_layers(record),
                         **{k: v for k, v in options.items() if v})

    def _load(self, ref: str, revision: str | None, what: str, default_id: str, option: str):
        from transformers import AutoModel

        check_local_dir(ref, what, default_id, option)
        try:
            m = AutoModel.from_pretrained(ref, trust_remote_code=True, revision=revision)
        except (OSError, ValueError) as e:  # hub errors arrive as OSError (HTTPError is one) or ValueError
            hub_id = default_id if looks_like_path(ref) else ref
            raise hub_load_error(e, what, ref, hub_id, revision, option) from None
        return m.to(self.device).eval()

    # -- what the manifest records -----------------------------------------------------------

    def info(self) -> dict[str, Any]:
        d = super().info()
        d.update(model=self.model_id, model_revision=self.model_revision, tokenizer=self.tokenizer_id,
                 tokenizer_revision=self.tokenizer_revision)
        return d

    def config(self) -> dict[str, Any]:
        return {"model": self.model_id, "model_revision": self.model_revision, "tokenizer": self.tokenizer_id,
                "tokenizer_revision": self.tokenizer_revision, "generation": self.layout.generation,
                "n_layer": self.n_layer, "seq_len": self.seq_len, "hop": self.hop,
                "tokens_per_s": SAMPLE_RATE / self.hop,
                "pooling": "mean over each clip's valid tokens across all its seq_len windows",
                "final_norm": f"{self.layout.final_norm_name}(h{self.n_layer}) per token, then mean",
                "dtype": dtype_name(self.autocast_dtype)}

    # -- cost model ---------------------------------------------------------------------------

    def flops_per_token(self, window: int | None = None) -> float:
        """Forward FLOPs per token of the transformer blocks at this window length (default seq_len):
        2 x block parameters (every weight is one multiply-add per token) + 4 x n_layer x n_embd x
        window for QK^T and AV. Like PaLM's / nanoGPT's MFU, the attention term counts the whole
        window (a causal flash kernel does about half of it); embeddings, ln_f, coch_head and any
        multi-token prediction heads (none of which the embeddings need) are left out."""
        window = self.seq_len if window is None else int(window)
        return 2.0 * self._block_params + 4.0 * self.n_layer * self.dim * window

    def cost(self, num_samples: int) -> float:
        tokens = max(1, int(num_samples) // self.hop)
        full, rest = divmod(tokens, self.seq_len)
        return full * self.seq_len * self.flops_per_token() + (rest * self.flops_per_token(rest) if rest else 0.0)

    # -- encode --------------------------------------------------------------------------------

    def _tokenize(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Each clip's valid token ids (int64, CPU): n // hop of them, at least 1."""
        lengths = [len(w) for w in waves]
        order = sorted(range(len(waves)), key=lambda i: lengths[i])
        budget = self.max_tokens_per_batch * self.hop  # padded samples per tokeniser call
        tokens: list[torch.Tensor | None] = [None] * len(waves)
        start = 0
        while start < len(order):
            # ascending lengths: the last clip of a group is its longest
            end = start + 1
            while end < len(order) and (end - start + 1) * max(lengths[order[end]], self.min_samples) <= budget:
                end += 1
            group = order[start:end]
            T = max(max(lengths[i] for i in group), self.min_samples)
            batch = torch.zeros(len(group), 1, T, dtype=torch.float32)
            for r, i in enumerate(group):
                batch[r, 0, :lengths[i]] = torch.from_numpy(np.asarray(waves[i], dtype=np.float32))
            out = self.tokenizer(to_device(batch, self.device))
            ids = out if isinstance(out, torch.Tensor) else output_field(out, "input_ids")
            if ids is None:  # older WavCoch revisions named the field input_values
                ids = output_field(out, "input_values")
            if ids is None or ids.dim() != 2 or ids.shape[0] != len(group):
                raise LakeError(f"WavCoch tokenizer {self.tokenizer_id!r} returned "
                                f"{type(out).__name__} without (B, L) input_ids; check tokenizer_revision")
            if ids.shape[1] != T // self.hop:
                # the valid-token count n // hop relies on this; counting padding would be silent
                raise LakeError(f"WavCoch tokenizer {self.tokenizer_id!r} gave {ids.shape[1]} tokens for {T} "
                                f"samples, expected {T // self.hop} (hop {self.hop}); this encoder cannot tell "
                                f"each clip's valid tokens apart from padding with this tokenizer revision")
            ids = ids.to("cpu", torch.long)
            for r, i in enumerate(group):
                tokens[i] = ids[r, :max(1, lengths[i] // self.hop)]
            start = end
        return tokens  # type: ignore[return-value]

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        B, L, D = len(waves), len(self.layers), self.dim
        if B == 0:
            return np.zeros((0, L, D), dtype=np.float32)
        tokens = self._tokenize(waves)

        # every window of every clip: (clip, start, length), longest first
        windows = [(i, s, min(self.seq_len, len(t) - s)) for i, t in enumerate(tokens)
                   for s in range(0, len(t), self.seq_len)]
        windows.sort(key=lambda w: -w[2])
        sums = torch.zeros(B, L, D, dtype=torch.float32, device=self.device)
        final_norm, input_name = self.layout.final_norm, self.layout.input_name
        start = 0
        while start < len(windows):
            width = windows[start][2]  # longest in this group
            group = windows[start:start + max(1, self.max_tokens_per_batch // width)]
            start += len(group)
            ids = torch.zeros(len(group), width, dtype=torch.long)  # right padding, token 0
            lens = torch.empty(len(group), dtype=torch.long)
            clip = torch.empty(len(group), dtype=torch.long)
            for r, (i, s, n) in enumerate(group):
                ids[r, :n] = tokens[i][s:s + n]
                lens[r], clip[r] = n, i
            ids, lens, clip = (to_device(t, self.device) for t in (ids, lens, clip))
            with autocast(self.device, self.autocast_dtype):
                out = self.model(**{input_name: ids}, output_hidden_states=True)
                hidden = output_field(out, "hidden_states")
                if hidden is None or len(hidden) != self.n_layer + 1:
                    raise LakeError(f"AuriStream model {self.model_id!r} returned "
                                    f"{0 if hidden is None else len(hidden)} hidden states, expected "
                                    f"n_layer + 1 = {self.n_layer + 1}; check model_revision")
                picked = [final_norm(hidden[-1]) if j < 0 else hidden[j] for j in self._hidden_index]
            sums.index_add_(0, clip, masked_sums(picked, lens))  # per window, per layer: sum over valid tokens
        counts = torch.tensor([len(t) for t in tokens], dtype=torch.float32, device=self.device)
        return (sums / counts[:, None, None]).cpu().numpy()
