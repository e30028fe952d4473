"""`hf:ID_OR_DIR` audio encoders on tiny randomly initialised transformers models, never the hub.

Each family is built at test time from its transformers config class and written with
`save_pretrained` (model + feature extractor), so it loads through the very calls a hub model
does (`AutoFeatureExtractor` / `AutoModel.from_pretrained`). The property that matters: a clip's
stored vector is the clip's own unpadded forward (every layer, mean over its frames), whatever
batch it was encoded in, within fp16 rounding. The expected vectors here are computed from the
saved folder with plain transformers calls, not with the encoder's code.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from test_corpus_sources import wav  # noqa: E402
from test_encoders import offline, wave  # noqa: E402,F401  (offline: an autouse fixture)
from test_sources import rows_and_embeddings, run_ingest  # noqa: E402

from ingest.config import parse_config  # noqa: E402
from ingest.decode import decode_audio  # noqa: E402
from ingest.encoders import ENCODERS, build_audio_encoder, encoder_class, encoders_from_manifest  # noqa: E402
from ingest.encoders.base import AudioEncoder, TextEncoder  # noqa: E402
from ingest.run import build_encoders, main  # noqa: E402
from lake.catalog import open_shard_set  # noqa: E402
from lake.errors import LakeError  # noqa: E402

SR = 16000
# the raw-waveform families' common tiny shape: a 3-layer conv front end (40-sample receptive field,
# stride 20: 800 frames/s), 2 transformer layers of 32
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16),
            conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
# family -> how its windows share a forward
BATCHING = {"wav2vec2": "exact", "hubert": "masked", "wavlm": "masked", "data2vec-audio": "exact",
            "whisper": "whisper"}


def _save_raw(d: Path, family: str) -> None:
    import transformers as tf

    if family == "wav2vec2":  # the wav2vec2-base family: group norm, no attention mask
        model, fe = tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="group", **TINY)), {"return_attention_mask": False}
    elif family == "hubert":  # the large family: layer norm, mask; this one without normalisation
        model = tf.HubertModel(tf.HubertConfig(feat_extract_norm="layer", **TINY))
        fe = {"return_attention_mask": True, "do_normalize": False}
    elif family == "wavlm":
        model, fe = tf.WavLMModel(tf.WavLMConfig(feat_extract_norm="layer", **TINY)), {"return_attention_mask": True}
    else:  # data2vec-audio: a mask, but its stacked positional convolutions read the padding
        cfg = tf.Data2VecAudioConfig(**{**TINY, "num_conv_pos_embeddings": 2}, conv_pos_kernel_size=5)
        model, fe = tf.Data2VecAudioModel(cfg), {"return_attention_mask": True}
    model.save_pretrained(str(d))
    tf.Wav2Vec2FeatureExtractor(**{"do_normalize": True, **fe}).save_pretrained(str(d))


def _save_whisper(d: Path) -> None:
    """Whisper of 16 mel bins and a 2 s input (200 log-mel frames -> 100 encoder positions)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    fe = WhisperFeatureExtractor(feature_size=16, chunk_length=2)
    cfg = WhisperConfig(num_mel_bins=16, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64,
                        max_source_positions=fe.nb_max_frames // 2, max_target_positions=16, pad_token_id=1,
                        bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
    WhisperModel(cfg).save_pretrained(str(d))
    fe.save_pretrained(str(d))


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, str]:
    """family -> model folder (seeded random weights)."""
    root = tmp_path_factory.mktemp("hf-models")
    out = {}
    for family in BATCHING:
        torch.manual_seed(0)
        d = root / family
        _save_whisper(d) if family == "whisper" else _save_raw(d, family)
        out[family] = str(d)
    return out


@pytest.fixture(scope="session")
def loaded(models):
    """family -> (feature extractor, the model that encodes: Whisper's encoder), loaded by hand."""
    from transformers import AutoFeatureExtractor, AutoModel

    out = {}
    for family, d in models.items():
        model = AutoModel.from_pretrained(d).eval()
        out[family] = (AutoFeatureExtractor.from_pretrained(d), model.get_encoder() if family == "whisper" else model)
    return out


def own_forward(loaded, family: str, clip: np.ndarray) -> tuple[np.ndarray, int]:
    """The clip alone, as transformers' documentation runs it: (every hidden state's mean over the
    clip's frames [L, D], its frame count). Whisper's frames covering the clip: ceil(samples / hop)
    log-mel frames, halved (ceil) by its stride-2 convolution."""
    fe, model = loaded[family]
    with torch.inference_mode():
        if family == "whisper":
            x = fe(clip, sampling_rate=SR, return_tensors="pt")["input_features"]
            hidden = model(x, output_hidden_states=True).hidden_states
            n = math.ceil(math.ceil(len(clip) / fe.hop_length) / 2)
        else:
            x = fe(clip, sampling_rate=SR, return_tensors="pt")["input_values"]
            hidden = model(x, output_hidden_states=True).hidden_states
            n = hidden[0].shape[1]
        return torch.stack([h[0, :n].mean(0) for h in hidden]).numpy(), n


def assert_fp16_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal within fp16 rounding (a relative 2^-11, what a stored vector keeps)."""
    np.testing.assert_allclose(got, want, rtol=2 ** -10, atol=2 ** -10 * float(np.abs(want).max()))


def spy_forwards(enc, monkeypatch) -> list[dict]:
    """Record every model call's input shapes and whether an attention mask came with it."""
    calls, real = [], enc.model.forward

    def forward(*args, **kw):
        x = kw.get("input_values", kw.get("input_features"))
        calls.append({"shape": tuple(x.shape), "mask": kw.get("attention_mask")})
        return real(*args, **kw)

    monkeypatch.setattr(enc.model, "forward", forward)
    return calls


# -- (a) padding never changes a clip's vector -------------------------------------------------------

@pytest.mark.parametrize("family", sorted(BATCHING))
def test_batched_clips_equal_their_own_unpadded_forward(models, loaded, family, monkeypatch):
    enc = build_audio_encoder("hf:" + models[family])
    assert enc.batching == BATCHING[family] and enc.layers == ["h0", "h1", "h2"] and enc.dim == 32
    calls = spy_forwards(enc, monkeypatch)
    seconds = [0.31, 0.08, 0.55, 0.2, 0.08, 0.013]  # two of equal length; 208 samples, still several frames
    clips = [wave(s, seed) for seed, s in enumerate(seconds)]
    got = enc.encode(clips)
    assert got.shape == (6, 3, 32) and got.dtype == np.float32
    for clip, vector in zip(clips, got):
        assert_fp16_close(vector, own_forward(loaded, family, clip)[0])
    if family in ("hubert", "wavlm"):  # padded beside longer clips, with the mask: one forward for all
        assert len(calls) == 1 and calls[0]["shape"][0] == 6 and calls[0]["mask"] is not None
    elif family == "whisper":  # every window is a full 2 s input; the frames covering the clip are pooled
        assert len(calls) == 1 and calls[0]["shape"] == (6, 16, 200)
    else:  # never padded: only the two clips of equal length share a forward
        assert sorted(c["shape"][0] for c in calls) == [1, 1, 1, 1, 2]
        assert all(c["mask"] is None for c in calls)


def test_data2vec_audio_would_read_the_padding(models, loaded):
    """Why the load-time check exists: data2vec-audio's feature extractor offers a mask, yet a clip
    padded beside a longer one, mask and all, comes out different; so it is never padded."""
    fe, model = loaded["data2vec-audio"]
    short, long_ = wave(0.2, 0), wave(0.5, 1)
    values = [fe(c, sampling_rate=SR)["input_values"][0] for c in (short, long_)]
    x = torch.zeros(2, len(long_))
    mask = torch.zeros(2, len(long_), dtype=torch.long)
    for r, v in enumerate(values):
        x[r, :len(v)], mask[r, :len(v)] = torch.from_numpy(v), 1
    with torch.inference_mode():
        padded = model(x, attention_mask=mask, output_hidden_states=True).hidden_states[-1][0]
    alone, n = own_forward(loaded, "data2vec-audio", short)
    assert np.abs(padded[:n].mean(0).numpy() - alone[-1]).max() > 1e-2
    assert "changes this model's frames" in build_audio_encoder("hf:" + models["data2vec-audio"]).batching_reason


# -- (b) long clips: windows pooled by frame counts -------------------------------------------------------

@pytest.mark.parametrize("family,window_s,seconds", [("wavlm", 0.25, 0.6), ("wav2vec2", 0.25, 0.5 + 30 / SR),
                                                     ("whisper", 0, 4.5)])
def test_long_clip_is_the_frame_weighted_mean_of_its_windows(models, loaded, family, window_s, seconds):
    """wavlm: windows of 4000 + 4000 + 1600 samples; wav2vec2: 4000 + 4000, the last 30 samples too
    few for a frame (its receptive field is 40) and left out; whisper: its 2 s input, 2 + 2 + 0.5 s."""
    enc = build_audio_encoder("hf:" + models[family], window_s=window_s)
    clip = wave(seconds, 7)
    step = enc.window
    parts = [own_forward(loaded, family, clip[s:s + step]) for s in range(0, len(clip), step)
             if len(clip) - s >= 40]
    means, frames = np.stack([m for m, _ in parts]), np.array([n for _, n in parts], dtype=np.float64)
    expected = (means * frames[:, None, None]).sum(0) / frames.sum()
    short = enc.encode([wave(0.1, 8)])  # batch-mates change nothing here either
    got = enc.encode([wave(0.1, 8), clip])
    assert_fp16_close(got[1], expected)
    assert_fp16_close(got[0], short[0])
    assert np.abs(got[1] - means[0]).max() > 1e-3  # not the first window alone


# -- (c) a real ingest stores those vectors and records the model ----------------------------------------

HF_SHA = "89abcdef0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def hf_set(models, tmp_path_factory):
    """24 wav clips of 0.15 - 0.9 s (3 labels) ingested with hf:<a WavLM folder> in batches of 8, from
    a folder `hf download --local-dir` would have written (it records the commit it fetched)."""
    tmp = tmp_path_factory.mktemp("hf-set")
    model = tmp / "wavlm-copy"
    shutil.copytree(models["wavlm"], model)
    meta = model / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text(f"{HF_SHA}\nsome-etag\n1700000000.0\n")
    labels = ["calm", "angry", "sad"]
    lines = ["path,label,transcript"]
    for i in range(24):
        wav(tmp / "clips" / f"c{i:02d}.wav", 0.15 + 0.75 * ((i * 7) % 24) / 23, 150 + 60 * (i % 3))
        lines.append(f"clips/c{i:02d}.wav,{labels[i % 3]},clip number {i}")
    (tmp / "manifest.csv").write_text("\n".join(lines) + "\n")
    out = tmp / "set"
    assert main([str(a) for a in ("--source", "manifest", "--input", tmp / "manifest.csv", "--out", out,
                                  "--audio-encoder", f"hf:{model}", "--audio-model-revision", "main",
                                  "--text-encoder", "hashing", "--batch-size", "8", "--decode-workers", "1",
                                  "--val-fraction", "0.25", "--test-fraction", "0.25", "--block-rows", "8")]) == 0
    return tmp, out, model


def test_ingest_stores_each_clips_own_forward_and_records_the_model(hf_set, loaded):
    tmp, out, model = hf_set
    rows = rows_and_embeddings(out)
    assert len(rows) == 24
    for key, (_, _, _, audio, _) in rows.items():
        clip = decode_audio(str(tmp / f"{key}.wav")).wave
        assert audio.dtype == np.float16 and audio.shape == (3, 32)
        assert_fp16_close(audio.astype(np.float32), own_forward(loaded, "wavlm", clip)[0])
    record = open_shard_set(str(out)).manifest.encoders["audio"]
    assert record["id"] == f"hf:{model}" and record["dim"] == 32 and record["layers"] == ["h0", "h1", "h2"]
    assert record["revision"] == record["model_revision"] == HF_SHA  # the commit the folder holds, not "main"
    cfg = record["config"]
    assert (cfg["model_type"], cfg["architectures"], cfg["model_class"]) == ("wavlm", ["WavLMModel"], "WavLMModel")
    assert cfg["feature_extractor"] == {"class": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000, "feature_size": 1,
                                        "padding_value": 0.0, "do_normalize": True, "return_attention_mask": True}
    assert cfg["n_layers"] == 2 and cfg["window_s"] == 20.0 and cfg["dtype"] == "fp32"
    assert cfg["batching"] == "masked" and "attention mask" in cfg["padding"] and "frame" in cfg["pooling"]
    assert cfg["batching_reason"] == "the feature extractor returns an attention mask, and the model honours it"


def test_ingest_resumes_with_the_same_record_and_refuses_another_window(hf_set, capsys):
    tmp, out, model = hf_set
    common = ["--source", "manifest", "--input", tmp / "manifest.csv", "--out", out, "--audio-encoder", f"hf:{model}",
              "--audio-revision", "main", "--text-encoder", "hashing", "--decode-workers", "1",
              "--val-fraction", "0.25", "--test-fraction", "0.25", "--block-rows", "8"]
    code, stdout, _ = run_ingest(capsys, *common)
    assert code == 0 and "already complete" in stdout
    code, _, err = run_ingest(capsys, *common, "--audio-window-s", "5")
    assert code == 2 and "encoders" in err


# -- (d) the record rebuilds the encoder; predict encodes new files with it -------------------------------

def test_the_record_rebuilds_the_same_encoder(hf_set, models):
    tmp, out, model = hf_set
    shards = open_shard_set(str(out))
    rows = rows_and_embeddings(out)
    audio, _ = encoders_from_manifest(shards.manifest.encoders)
    assert audio.info() == shards.manifest.encoders["audio"]
    for key in sorted(rows)[:4]:
        clip = decode_audio(str(tmp / f"{key}.wav")).wave
        np.testing.assert_array_equal(audio.encode([clip]).astype(np.float16)[0], rows[key][3])
    # a local copy of the recorded model may stand in for it; another model may not
    copy, _ = encoders_from_manifest(shards.manifest.encoders, audio_model=models["wavlm"])
    assert copy.name == f"hf:{model}" and copy.model_id == models["wavlm"]
    with pytest.raises(LakeError, match="not the model the set was made with.*feature_extractor"):
        encoders_from_manifest(shards.manifest.encoders, audio_model=models["hubert"])


def test_predict_on_a_set_made_with_an_hf_encoder(hf_set, tmp_path):
    from evaluation.predict import predict
    from trainers import clap, slm

    tmp, out, _ = hf_set
    ck = tmp_path / "ck"
    fast = ["--preset", "debug", "--batch-size", "4", "--device", "cpu", "--no-progress"]
    assert clap.main(["--data-root", str(out), "--save-dir", str(ck / "clap"), *fast]) == 0
    assert clap.main(["export", "--checkpoint", str(ck / "clap" / "clap_best.pt"), "--out", str(ck / "proj.pt")]) == 0
    assert slm.main(["--data-root", str(out), "--clap-ckpt", str(ck / "proj.pt"), "--num-emotions", "3",
                     "--save-dir", str(ck / "slm"), "--no-test-at-end", *fast]) == 0
    files = [str(tmp / "clips" / "c03.wav"), str(tmp / "clips" / "c10.wav")]
    results = predict(files, str(ck / "slm" / "slm_stage3_best.pt"), clap_ckpt=str(ck / "proj.pt"), top=3)
    assert [r["file"] for r in results] == files
    for r in results:
        assert "error" not in r and len(r["slm"]) == 3 and r["transcript"] == ""
        assert {p["label"] for p in r["slm"]} == {"calm", "angry", "sad"}
        assert abs(sum(p["prob"] for p in r["slm"]) - 1) < 1e-3


# -- (e) what goes wrong: one clear line ---------------------------------------------------------------

def test_a_wrong_sampling_rate_is_refused(models, tmp_path):
    from transformers import Wav2Vec2FeatureExtractor

    d = tmp_path / "eight-khz"
    shutil.copytree(models["wavlm"], d)
    Wav2Vec2FeatureExtractor(sampling_rate=8000, return_attention_mask=True).save_pretrained(str(d))
    with pytest.raises(LakeError, match="expects 8000 Hz audio .* ingest decodes every clip to 16000 Hz") as err:
        build_audio_encoder(f"hf:{d}")
    assert "\n" not in str(err.value)


def _not_a_speech_model(tmp_path: Path, what: str) -> str:
    d = tmp_path / what
    d.mkdir()
    if what == "text-model":  # a real model folder, but of a text model: no feature extractor
        from transformers import BertConfig, BertModel

        BertModel(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=16)).save_pretrained(str(d))
    elif what == "notes":
        (d / "notes.txt").write_text("not a model")
    return str(d)


@pytest.mark.parametrize("what,says", [("missing", "no speech model directory at"),
                                       ("notes", "is not a speech model directory (no config.json"),
                                       ("text-model", "has no preprocessor_config.json")])
def test_a_folder_that_is_not_a_speech_model_is_one_lake_error(tmp_path, capsys, what, says):
    d = str(tmp_path / "nowhere") if what == "missing" else _not_a_speech_model(tmp_path, what)
    with pytest.raises(LakeError, match=re.escape(says)) as err:
        build_audio_encoder(f"hf:{d}")
    assert "\n" not in str(err.value) and d in str(err.value)
    (tmp_path / "m.csv").write_text("path,label\nclip.wav,calm\n")
    code, _, stderr = run_ingest(capsys, "--source", "manifest", "--input", tmp_path / "m.csv", "--out",
                                 tmp_path / "set", "--audio-encoder", f"hf:{d}")
    lines = stderr.strip().splitlines()
    # ingest says what it is doing ("ingest: ..." progress lines), then the one error line; no traceback
    assert code == 2 and lines[-1] == f"error: {err.value}"
    assert all(line.startswith("ingest: ") for line in lines[:-1]), lines


def test_hub_id_offline_says_what_to_download():
    with pytest.raises(LakeError) as err:
        build_audio_encoder("hf:lake-tests/no-such-speech-model")
    assert "hf download lake-tests/no-such-speech-model" in str(err.value) and "--audio-model DIR" in str(err.value)


def test_windows_fit_the_model(models):
    with pytest.raises(LakeError, match="longer than Whisper's input \\(2 s\\)"):
        build_audio_encoder("hf:" + models["whisper"], window_s=5)
    assert build_audio_encoder("hf:" + models["whisper"], window_s=1.5).window == 24000
    with pytest.raises(LakeError, match="shorter than one frame of this model \\(40 samples\\)"):
        build_audio_encoder("hf:" + models["wav2vec2"], window_s=0.001)


# -- the registry, the flags, the cost model --------------------------------------------------------------

def test_every_registered_encoder_is_its_kind():
    for kind, base in (("audio", AudioEncoder), ("text", TextEncoder)):
        for name in ENCODERS[kind]:
            cls = encoder_class(kind, name + "x" if name.endswith(":") else name)
            assert issubclass(cls, base) and {"build", "from_config", "from_record"} <= set(dir(cls))
    for kind, name in (("audio", "hashing"), ("audio", "hf:"), ("text", "fbank"), ("text", "st:")):
        with pytest.raises(LakeError, match=f"unknown {kind} encoder"):
            encoder_class(kind, name)


def test_flags_reach_the_hf_encoder(models):
    cfg = parse_config(["--source", "synthetic", "--input", "x", "--out", "y", "--audio-encoder",
                        "hf:lake-tests/only-a-name", "--audio-model", models["hubert"], "--audio-window-s", "0.5",
                        "--audio-layers", "last", "--device", "cpu"])
    audio, text = build_encoders(cfg, "cpu")
    assert audio.name == "hf:lake-tests/only-a-name" and audio.model_id == models["hubert"]
    assert audio.window == 8000 and audio.layers == ["h2"] and text.name == "hashing"
    info = audio.info()
    assert info["config"]["feature_extractor"]["do_normalize"] is False and info["config"]["window_s"] == 0.5
    json.dumps(info)  # goes into manifest.json as is
    assert parse_config(["--source", "synthetic", "--input", "x", "--out", "y", "--audio-revision",
                         "abc"]).audio_model_revision == "abc"  # the earlier spelling


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_cost_is_torchs_flop_count(models, family):
    """`cost` (what benchmarks.gpu divides by time) against torch's FLOP counter on the same forward,
    with eager attention so that the counter sees the attention matmuls."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModel

    enc = build_audio_encoder("hf:" + models[family])
    model = AutoModel.from_pretrained(models[family], attn_implementation="eager").eval()
    model = model.get_encoder() if family == "whisper" else model
    for seconds in (0.3, 0.7):
        inputs = enc._inputs([wave(seconds, 3)], masked=False)
        with FlopCounterMode(display=False) as counter, torch.no_grad():  # (the weight norm fails under inference_mode)
            model(**inputs)
        assert enc.cost(round(seconds * SR)) == counter.get_total_flops()
    assert enc.cost(5 * SR) > 2 * enc.cost(2 * SR) if family == "whisper" else enc.cost(SR) > 2 * enc.cost(SR // 2)
