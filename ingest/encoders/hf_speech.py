"""`hf:ID_OR_DIR`: any transformers speech encoder, every hidden state mean-pooled over a clip's frames.

Loaded with `AutoFeatureExtractor` + `AutoModel` from a hub id or a local folder (what
`save_pretrained` or `hf download --local-dir` writes): the raw-waveform family (wav2vec2,
HuBERT, WavLM, data2vec-audio, ...: `input_values`, and the model's `_get_feat_extract_output_lengths`)
and Whisper (its encoder, on the feature extractor's log-mel `input_features`). No remote code.

Layers: `h0 ... hN` = the model's `hidden_states` with `output_hidden_states=True` (h0 the
first, the feature projection / embeddings output; hN the last, after Whisper's final norm),
each a mean over the clip's valid frames, selected by --audio-layers.

Padding never changes a clip's vector. How windows share a forward (`batching` in the record):

- `masked`: the feature extractor returns an attention mask (wav2vec2-large-lv60, HuBERT-large,
  WavLM, ...): windows are padded to the longest of their batch and the mask is passed. That the
  model honours it is checked once at load, in fp32: a test clip padded beside a longer one must
  give its own vector (data2vec-audio does not: its stacked positional convolutions read the
  padding); a model that fails runs `exact` instead.
- `exact`: no attention mask (the wav2vec2-base family: feat_extract_norm="group", whose first
  layer normalises each channel over the whole input, padding included): never padded; only
  windows of exactly equal length share a forward, so in practice clips run one at a time.
- `whisper`: Whisper's encoder always sees 30 s of log-mel frames (the feature extractor pads
  every window to that, as Whisper is trained); only the frames covering the clip are pooled.

A clip's valid frames come from the model's own output-length rule (`_get_feat_extract_output_lengths`;
for Whisper applied to the log-mel frames covering the clip, ceil(samples / hop_length)), never
from a hard-coded frame rate. The feature extractor's own normalisation (do_normalize: zero
mean, unit variance) is applied to each window alone, as if it were the whole input; its
sampling rate must be the 16 kHz ingest decodes to.

Long clips run in windows of --audio-window-s (default 20 s; Whisper: its 30 s input, at most):
each window's frames are summed per layer, the sums added across the clip's windows and divided
by its total frame count, i.e. the frame-weighted mean of the windows' means. A last window too
short for one frame (the conv front end's 25 ms receptive field) adds nothing, like the trailing
samples a convolution drops; a whole clip that short is zero-padded to one frame.

fp32 on CPU, bf16 autocast on CUDA (weights stay fp32). Dims and layer count are read from the
model's config; the manifest records the architecture, the id or folder, the revision actually
loaded and the feature extractor's settings, from which `from_record` rebuilds the encoder.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ingest.encoders.base import SAMPLE_RATE, AudioEncoder, record_layers
from ingest.encoders.compute import autocast, autocast_dtype, dtype_name, masked_sums, output_field, to_device
from ingest.encoders.hub import check_local_dir, hub_load_error, loaded_revision, looks_like_path
from lake.errors import LakeError
from lake.layers import resolve_layers

DEFAULT_WINDOW_S = 20.0
PROBE_TOLERANCE = 1e-3  # relative, in fp32: honoured masks differ by ~1e-6, a leak by far more than this
FE_SETTINGS = ("sampling_rate", "feature_size", "padding_value", "do_normalize", "return_attention_mask",
               "n_samples", "chunk_length", "hop_length", "n_fft", "nb_max_frames", "dither")
BATCHING = {
    "masked": "windows padded to the longest of their batch, with the attention mask (checked at load: a clip "
              "padded beside a longer one gives its own vector)",
    "exact": "never padded: only windows of exactly equal length share a forward",
    "whisper": "each window is one full Whisper input (the feature extractor pads it to its 30 s, as Whisper "
               "always runs); only the frames covering the clip are pooled",
}
POOLING = ("per layer, the mean over each clip's valid frames (the model's output-length rule) across all its "
           "windows: the frame-weighted mean of the windows' means")


class HfSpeechEncoder(AudioEncoder):
    def __init__(self, name: str, device: str = "cpu", layers: str = "all", model: str | None = None,
                 revision: str | None = None, window_s: float = 0.0, dtype: str = "auto",
                 max_batch_s: float | None = None):
        """`name`: hf:ID_OR_DIR (recorded as the encoder's id). `model`: a local copy to load instead.
        `window_s`: seconds per forward, 0 = the model's default. `max_batch_s`: padded seconds of
        audio per forward (default 320 on CUDA, 60 on CPU)."""
        if not str(name).startswith("hf:") or len(name) < 4:
            raise LakeError(f"audio encoder {name!r}: write hf:ID_OR_DIR (a hub id or a local model folder)")
        self.name = name
        self.device = torch.device(device)
        self.model_id = str(model or name[3:])
        self.autocast_dtype = autocast_dtype(dtype, self.device, name)
        self.feature_extractor, loaded = self._load(self.model_id, revision)
        self.model_revision = self.revision = loaded_revision(loaded.config, self.model_id, revision)
        self.architecture = {"model_type": loaded.config.model_type,
                             "architectures": list(getattr(loaded.config, "architectures", None) or [])}
        self.whisper = loaded.config.model_type == "whisper"
        self.model = (loaded.get_encoder() if self.whisper else loaded).to(self.device).eval()
        self._check_inputs()
        cfg = loaded.config
        self.n_layers = int(cfg.encoder_layers if self.whisper else cfg.num_hidden_layers)
        self.dim = int(cfg.d_model if self.whisper else cfg.hidden_size)
        self.layers = resolve_layers(layers, [f"h{i}" for i in range(self.n_layers + 1)])
        self._hidden_index = [int(n[1:]) for n in self.layers]
        self.window = self._window_samples(float(window_s or 0.0))
        self.min_samples = self._min_samples()
        if self.window < self.min_samples:
            raise LakeError(f"{self.name}: --audio-window-s {window_s:g} is shorter than one frame of this model "
                            f"({self.min_samples} samples); use a longer window, or 0 for the model's default")
        budget_s = float(max_batch_s) if max_batch_s else (320.0 if self.device.type == "cuda" else 60.0)
        self.max_batch_samples = max(1, round(budget_s * SAMPLE_RATE))
        self.batching, self.batching_reason = self._batching()

    # -- the three ways to make one ---------------------------------------------------------------

    @classmethod
    def build(cls, name, device="cpu", layers="all", **options):
        return cls(name, device=device, layers=layers, **options)

    @classmethod
    def from_config(cls, name, cfg, device):
        """Reads --audio-model (a local copy), --audio-model-revision, --audio-window-s, --audio-layers."""
        return cls(name, device=device, layers=cfg.audio_layers, model=cfg.audio_model or None,
                   revision=cfg.audio_model_revision or None, window_s=cfg.audio_window_s)

    @classmethod
    def from_record(cls, record, device="cpu", model: str = "", **overrides):
        """The recorded model at its recorded revision (or `model`, a local copy of it), window and
        layers; a model whose architecture, depth or feature extractor differs from the record's is
        refused, since it would put new audio into another space."""
        recorded = record.get("config", {})
        enc = cls(record["id"], device=device, layers=record_layers(record), model=model or recorded.get("model"),
                  revision=None if model else recorded.get("model_revision"), window_s=recorded.get("window_s", 0.0))
        mine = enc.config()
        differ = [k for k in ("model_type", "n_layers", "feature_extractor") if mine.get(k) != recorded.get(k)]
        if differ:
            said = "; ".join(f"{k}: the set has {recorded.get(k)}, this model {mine.get(k)}" for k in differ)
            raise LakeError(f"the rebuilt audio encoder {record['id']} ({enc.model_id}) is not the model the set was "
                            f"made with ({said}); point --audio-model at a copy of {recorded.get('model')}")
        return enc

    # -- loading -----------------------------------------------------------------------------------

    def _load(self, ref: str, revision: str | None):
        from transformers import AutoFeatureExtractor, AutoModel  # seconds to import: only when used

        local = looks_like_path(ref)
        hub_id = "HUB_ID" if local else ref  # what `hf download` would fetch
        check_local_dir(ref, "speech model", hub_id, "--audio-model")
        if local and not (Path(ref).expanduser() / "preprocessor_config.json").is_file():
            raise LakeError(f"{ref} has no preprocessor_config.json (its feature extractor's settings): not a speech "
                            f"model folder, or one saved without its feature extractor. Add it with "
                            f"AutoFeatureExtractor.from_pretrained(HUB_ID).save_pretrained(DIR), or download the whole "
                            f"model with `hf download HUB_ID --local-dir {ref}`")
        try:
            fe = AutoFeatureExtractor.from_pretrained(ref, revision=revision)
            model = AutoModel.from_pretrained(ref, revision=revision)
        except (OSError, ValueError, KeyError) as e:  # hub errors: OSError/ValueError; unknown model_type: KeyError
            raise hub_load_error(e, "speech model", ref, hub_id, revision, "--audio-model") from None
        return fe, model

    def _check_inputs(self) -> None:
        """16 kHz audio in, and an input this encoder knows how to make and count frames of."""
        fe = self.feature_extractor
        rate = getattr(fe, "sampling_rate", None)
        if rate != SAMPLE_RATE:
            raise LakeError(f"{self.name}: the model expects {rate} Hz audio (its feature extractor's sampling_rate), "
                            f"but ingest decodes every clip to {SAMPLE_RATE} Hz mono; pick a 16 kHz model")
        what = f"{self.name}: {self.architecture['model_type']} ({type(self.model).__name__})"
        if self.whisper:
            if not hasattr(fe, "nb_max_frames"):
                raise LakeError(f"{what}: its feature extractor {type(fe).__name__} is not Whisper's (no nb_max_frames)")
            return
        first_input = (getattr(fe, "model_input_names", None) or ["?"])[0]
        if first_input != "input_values" or not hasattr(self.model, "_get_feat_extract_output_lengths"):
            raise LakeError(f"{what} takes {first_input} from {type(fe).__name__}: hf: takes raw-waveform speech "
                            f"encoders (wav2vec2, HuBERT, WavLM, data2vec-audio) and Whisper")

    def _window_samples(self, window_s: float) -> int:
        if self.whisper:
            whole = int(self.feature_extractor.n_samples)
            if window_s * SAMPLE_RATE > whole:
                raise LakeError(f"{self.name}: --audio-window-s {window_s:g} is longer than Whisper's input "
                                f"({whole / SAMPLE_RATE:g} s); use at most that, or 0 for it")
            return round(window_s * SAMPLE_RATE) if window_s else whole
        return round((window_s or DEFAULT_WINDOW_S) * SAMPLE_RATE)

    def frames(self, lengths: list[int]) -> list[int]:
        """Valid model frames of windows of these sample counts (the model's output-length rule)."""
        n = torch.as_tensor(lengths, dtype=torch.long)
        if self.whisper:  # log-mel frames covering the samples, then the encoder's conv strides
            n = torch.clamp((n + self.feature_extractor.hop_length - 1) // self.feature_extractor.hop_length,
                            max=self.feature_extractor.nb_max_frames)
        return [int(x) for x in self.model._get_feat_extract_output_lengths(n)]

    def _min_samples(self) -> int:
        """The shortest window that gives a frame (wav2vec2's conv front end: 400 samples)."""
        counts = self.frames(list(range(1, SAMPLE_RATE + 1)))
        first = next((i + 1 for i, c in enumerate(counts) if c >= 1), None)
        if first is None:
            raise LakeError(f"{self.name}: the model gives no frame for 1 s of audio; it is not a speech encoder")
        return first

    def _batching(self) -> tuple[str, str]:
        """How windows share a forward (module docstring) and why."""
        if self.whisper:
            return "whisper", "Whisper's encoder always runs on its full input"
        if not getattr(self.feature_extractor, "return_attention_mask", False):
            return "exact", "the feature extractor returns no attention mask (the model must not see padding)"
        if self._padding_is_harmless():
            return "masked", "the feature extractor returns an attention mask, and the model honours it"
        return "exact", "padding with the attention mask changes this model's frames (checked at load)"

    @torch.inference_mode()
    def _padding_is_harmless(self) -> bool:
        """A clip alone and the same clip padded beside a longer one, in fp32 (no TF32): the same vector?"""
        rng = np.random.default_rng(0)
        short = (0.1 * rng.standard_normal(SAMPLE_RATE // 2)).astype(np.float32)
        long_ = (0.1 * rng.standard_normal(3 * SAMPLE_RATE // 2)).astype(np.float32)
        every = list(range(self.n_layers + 1))
        with _exact_fp32():
            alone, _ = self._forward([short], masked=True, index=every, dtype=None)
            together, _ = self._forward([short, long_], masked=True, index=every, dtype=None)
        scale = float(alone.abs().max()) or 1.0
        return float((alone[0] - together[0]).abs().max()) / scale <= PROBE_TOLERANCE

    # -- what the manifest records -------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {**super().info(), "model": self.model_id, "model_revision": self.model_revision}

    def config(self) -> dict[str, Any]:
        fe = self.feature_extractor
        settings = {k: getattr(fe, k) for k in FE_SETTINGS if hasattr(fe, k)}
        return {"model": self.model_id, "model_revision": self.model_revision, **self.architecture,
                "model_class": type(self.model).__name__,
                "feature_extractor": {"class": type(fe).__name__, **settings},
                "n_layers": self.n_layers, "window_s": self.window / SAMPLE_RATE, "dtype": dtype_name(self.autocast_dtype),
                "pooling": POOLING, "batching": self.batching, "padding": BATCHING[self.batching],
                "batching_reason": self.batching_reason}

    # -- encode ---------------------------------------------------------------------------------------

    def _windows(self, waves: list[np.ndarray]) -> list[tuple[int, np.ndarray]]:
        """(clip, samples) of every window of every clip; clips too short for a frame are zero-padded."""
        out = []
        for i, w in enumerate(waves):
            w = np.asarray(w, dtype=np.float32)
            if len(w) < self.min_samples:
                w = np.pad(w, (0, self.min_samples - len(w)))
            out += [(i, w[s:s + self.window]) for s in range(0, len(w), self.window)
                    if s == 0 or len(w) - s >= self.min_samples]
        return out

    def _groups(self, windows: list[tuple[int, np.ndarray]]) -> list[list[int]]:
        """Window indices per forward, longest first: at most max_batch_samples padded samples each;
        `exact`: equal lengths only."""
        order = sorted(range(len(windows)), key=lambda j: -len(windows[j][1]))
        groups: list[list[int]] = []
        for j in order:
            n = len(windows[j][1])
            if groups:
                g = groups[-1]
                # what each member costs: Whisper's full input, else the group's longest window
                width = self.feature_extractor.n_samples if self.whisper else len(windows[g[0]][1])
                fits = (len(g) + 1) * width <= self.max_batch_samples
                if fits and (self.batching != "exact" or n == width):
                    g.append(j)
                    continue
            groups.append([j])
        return groups

    def _inputs(self, samples: list[np.ndarray], masked: bool) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for windows of possibly different lengths (right-padded)."""
        fe = self.feature_extractor
        if self.whisper:  # pads each to the full input itself
            feats = fe(samples, sampling_rate=SAMPLE_RATE, return_tensors="pt")["input_features"]
            return {"input_features": to_device(feats.float(), self.device)}
        values = [np.asarray(fe(s, sampling_rate=SAMPLE_RATE)["input_values"][0], dtype=np.float32) for s in samples]
        width = max(len(v) for v in values)
        x = torch.full((len(values), width), float(getattr(fe, "padding_value", 0.0)), dtype=torch.float32)
        mask = torch.zeros(len(values), width, dtype=torch.long)
        for r, v in enumerate(values):
            x[r, :len(v)] = torch.from_numpy(v)
            mask[r, :len(v)] = 1
        inputs = {"input_values": to_device(x, self.device)}
        if masked:
            inputs["attention_mask"] = to_device(mask, self.device)
        elif len(set(map(len, values))) > 1:
            raise LakeError(f"{self.name}: windows of different lengths without an attention mask (an encoder bug)")
        return inputs

    def _forward(self, samples: list[np.ndarray], masked: bool, index: list[int],
                 dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per window: (hidden states `index` summed over its valid frames [G, len(index), D] fp32,
        its valid frame count [G])."""
        inputs = self._inputs(samples, masked)
        with autocast(self.device, dtype):
            hidden = output_field(self.model(**inputs, output_hidden_states=True), "hidden_states")
        if hidden is None or len(hidden) != self.n_layers + 1:
            raise LakeError(f"{self.name} returned {0 if hidden is None else len(hidden)} hidden states, expected "
                            f"{self.n_layers + 1} (its config's layers + 1); check the model's revision")
        frames = torch.tensor(self.frames([len(s) for s in samples]), device=self.device)
        width = hidden[0].shape[1]
        if int(frames.max()) > width:
            raise LakeError(f"{self.name} gave {width} frames where its output-length rule counts "
                            f"{int(frames.max())}; this encoder cannot tell its valid frames apart")
        return masked_sums([hidden[j] for j in index], frames), frames

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> np.ndarray:
        B, L, D = len(waves), len(self.layers), self.dim
        if B == 0:
            return np.zeros((0, L, D), dtype=np.float32)
        windows = self._windows(waves)
        sums = torch.zeros(B, L, D, dtype=torch.float32, device=self.device)
        counts = torch.zeros(B, dtype=torch.float32, device=self.device)
        for group in self._groups(windows):
            pooled, frames = self._forward([windows[j][1] for j in group], masked=self.batching == "masked",
                                           index=self._hidden_index, dtype=self.autocast_dtype)
            clips = torch.tensor([windows[j][0] for j in group], device=self.device)
            sums.index_add_(0, clips, pooled)
            counts.index_add_(0, clips, frames.float())
        return (sums / counts[:, None, None]).cpu().numpy()

    # -- cost model ---------------------------------------------------------------------------------

    def cost(self, num_samples: int) -> float:
        """Forward FLOPs for a clip of `num_samples` (all its windows): 2 x weights x positions for
        every convolution and linear layer (the conv front end at its own strides, the rest once
        per frame) + 4 x layers x width x frames^2 for attention (QK^T and AV); norms, activations
        and position-embedding lookups are left out. Whisper's windows always cost its full input."""
        windows = [len(w) for _, w in self._windows([np.zeros(max(0, int(num_samples)), np.float32)])]
        return float(sum(self._window_flops(n) for n in windows))

    def _window_flops(self, n: int) -> float:
        front = self._front_convs()
        length = int(self.feature_extractor.nb_max_frames) if self.whisper else n
        flops = 0.0
        for conv in front:
            length = _conv_out(conv, length)
            flops += 2.0 * conv.weight.numel() * length
        seen = {id(c) for c in front}
        frames = length
        for m in self.model.modules():
            if isinstance(m, torch.nn.Linear):
                flops += 2.0 * m.weight.numel() * frames
            elif isinstance(m, torch.nn.Conv1d) and id(m) not in seen:  # positional convolution: per frame
                flops += 2.0 * m.weight.numel() * _conv_out(m, frames)
        return flops + 4.0 * self.n_layers * self.dim * frames * frames

    def _front_convs(self) -> list[torch.nn.Conv1d]:
        """The convolutions that turn input samples (or Whisper's log-mel frames) into model frames."""
        if self.whisper:
            return [self.model.conv1, self.model.conv2]
        front = getattr(self.model, "feature_extractor", None)
        return [m for m in front.modules() if isinstance(m, torch.nn.Conv1d)] if front is not None else []


@contextmanager
def _exact_fp32():
    """Plain fp32 matmuls and convolutions on CUDA (TF32 off), restored afterwards."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


def _conv_out(conv: torch.nn.Conv1d, length: int) -> int:
    pad = conv.padding[0] if isinstance(conv.padding, tuple) else 0
    return math.floor((length + 2 * pad - conv.dilation[0] * (conv.kernel_size[0] - 1) - 1) / conv.stride[0]) + 1
