"""Source readers: LAION streamed from an object store equals LAION from a folder (and survives a
fault mid-tar), member paths and keys, language codes, damaged tables, segments of long files."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest

from lake.catalog import open_shard_set
from lake.errors import LakeError
from shards.mapped import ShardMap

ARGS = ("--decode-workers", "1", "--block-rows", "16", "--rows-per-shard", "48", "--languages", "en,de",
        "--val-fraction", "0.2", "--test-fraction", "0.2")


def run_ingest(capsys, *args) -> tuple[int, str, str]:
    """`python -m ingest ARGS` in this process (so a test can reach into its reads)."""
    from ingest.run import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def rows_and_embeddings(root) -> dict[str, tuple]:
    """key -> (label, split, transcript, audio embedding, text embedding) of every row of a set."""
    shards = open_shard_set(str(root))
    index = {r["key"]: r for r in shards.index.to_pylist()}
    out = {}
    for e in shards.manifest.shards:
        m = ShardMap(shards.shard_path(e), e)
        for b in range(len(e.blocks)):
            blk = m.block(b)
            for key, audio, text in zip(blk["meta"]["keys"], blk["audio"], blk["text"]):
                r = index[key]
                out[key] = (r["label"], r["split"], r["transcript"], np.asarray(audio), np.asarray(text))
    return out


def same_rows(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k][:3] == b[k][:3] and all(np.array_equal(x, y) for x, y in zip(a[k][3:], b[k][3:]))
                                        for k in a)


# -- an object store on loopback ------------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from ingest.synthetic import generate

    root = tmp_path_factory.mktemp("corpus")
    generate(str(root), clips=40, meld_clips=0, seed=5, workers=1)
    return root


@pytest.fixture(scope="module")
def local_set(corpus, tmp_path_factory):
    """The reference: the corpus' tars ingested from the local folder."""
    from ingest.run import main

    out = tmp_path_factory.mktemp("sets") / "local"
    assert main(["--source", "laion", "--input", str(corpus / "laion"), "--out", str(out), *ARGS]) == 0
    return out


@pytest.fixture(scope="module")
def s3_laion(corpus, s3_server):
    from conftest import make_bucket

    s3_bucket = make_bucket()
    import fsspec

    fs = fsspec.filesystem("s3")
    for name in sorted(os.listdir(corpus / "laion")):
        fs.put_file(str(corpus / "laion" / name), f"{s3_bucket[5:]}/laion/{name}")
    return f"{s3_bucket}/laion"


def test_streamed_from_an_object_store_equals_the_local_folder(capsys, local_set, s3_laion, tmp_path):
    out = tmp_path / "streamed"
    code, stdout, err = run_ingest(capsys, "--source", "laion", "--input", s3_laion, "--out", out, *ARGS)
    assert code == 0, err
    assert same_rows(rows_and_embeddings(local_set), rows_and_embeddings(out))
    uris = open_shard_set(str(out)).index.column("source_uri").to_pylist()
    assert all(u.startswith(s3_laion + "/") and ".tar#" in u for u in uris)
    # the unknown-prompt tar is decided by its name and never fetched
    reasons = {q["key"]: q["reason"] for q in open_shard_set(str(out)).quarantine()}
    assert reasons["en_alloy_intense_boredom_tedium_and_monotony/*"].endswith("(tar not fetched)")


def test_listing_reads_no_tar_contents(s3_laion, monkeypatch):
    import s3fs

    from ingest.sources.laion import LaionSource

    def no_reads(*a, **k):
        raise AssertionError("a tar was read while listing")

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", no_reads)
    src = LaionSource(s3_laion, languages=("de",))
    assert src.units() and all(u.id.startswith("de_") and u.size > 0 for u in src.units())


def test_a_fault_mid_tar_is_retried_then_reported_and_a_rerun_resumes(capsys, local_set, s3_laion, tmp_path,
                                                                       monkeypatch):
    import s3fs

    from ingest.sources import location

    monkeypatch.setattr(location, "STREAM_BLOCK", 16 * 1024)  # several ranged reads per tar
    monkeypatch.setattr(location, "RETRY_WAIT_S", 0.01)
    flaky = "en_coral_intense_anger_rage_fury_hatred_and_annoyance.tar"  # fails once: the retry hides it
    broken = "en_verse_intense_sadness_sorrow_grief_melancholy_and_heartache_vocalbursts_fixed.tar"  # the last unit
    fetches: dict[str, int] = {}
    real = s3fs.core.S3File._fetch_range

    def faulty(self, start, end):
        name = self.path.rsplit("/", 1)[-1]
        fetches[name] = fetches.get(name, 0) + 1
        if (name == flaky and fetches[name] == 2) or (name == broken and start > 0):
            raise OSError(f"connection reset (injected at byte {start})")
        return real(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", faulty)
    out = tmp_path / "faulty"
    args = ("--source", "laion", "--input", s3_laion, "--out", out, *ARGS, "--checkpoint-mb", "0.01")
    code, _, err = run_ingest(capsys, *args)
    assert code == 2 and "Traceback" not in err
    assert f"{broken}: reading failed at byte" in err and "re-run the same command to resume" in err
    assert fetches[flaky] > 2  # read on after the failed read
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", real)  # the store is back
    code, _, err = run_ingest(capsys, *args)
    assert code == 0 and "resuming" in err
    assert same_rows(rows_and_embeddings(local_set), rows_and_embeddings(out))


def test_the_hub_revision_is_pinned_and_recorded(monkeypatch):
    """`hf://` goes through the same listing and streaming as `s3://`; what differs is that the
    revision is resolved to a commit first (the hub's own client, stubbed here: no hub access)."""
    import huggingface_hub

    from ingest.sources import location

    class Resolved:
        repo_type, repo_id, revision, path_in_repo = "dataset", "laion/x", "main", "en"

    class FS:
        def resolve_path(self, url):
            assert url == "hf://datasets/laion/x@main/en"
            return Resolved()

    class Api:
        def repo_info(self, repo_id, repo_type, revision):
            assert (repo_id, repo_type, revision) == ("laion/x", "dataset", "main")
            return type("Info", (), {"sha": "0123abcd"})()

    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FS)
    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    assert location.pin_hub_url("hf://datasets/laion/x@main/en") == ("hf://datasets/laion/x@0123abcd/en", "0123abcd")
    assert location.pin_hub_url("s3://b/laion") == ("s3://b/laion", None)


def test_the_revision_read_is_recorded_in_the_manifest(capsys, s3_laion, tmp_path, monkeypatch):
    """An `hf://` input through the real ingest: the hub's answer (the commit of `@main`) is stubbed to
    serve the same tars from the loopback store; the manifest and the summary name the commit."""
    from ingest.sources import laion

    hub = "hf://datasets/laion/x@main"
    monkeypatch.setattr(laion, "pin_hub_url", lambda url: (s3_laion, "0123abcd") if url == hub else (url, None))
    code, stdout, err = run_ingest(capsys, "--source", "laion", "--input", hub, "--out", tmp_path / "pinned", *ARGS)
    assert code == 0, err
    source = open_shard_set(str(tmp_path / "pinned")).manifest.source
    assert source["input"] == hub and source["revision"] == "0123abcd"
    assert "revision 0123abcd" in stdout + err


def test_hub_failures_are_one_clear_line():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    from ingest.sources.location import hub_message

    gated = FileNotFoundError("hf://datasets/a/b")  # how HfFileSystem reports it
    gated.__cause__ = GatedRepoError("401 Client Error")
    assert hub_message("hf://datasets/a/b", gated) == (
        "hf://datasets/a/b: gated dataset: accept its terms on its hub page, then log in with `hf auth login` "
        "(or set HF_TOKEN)")
    assert "private" in hub_message("a/b", RepositoryNotFoundError("404")) and "hf auth login" in hub_message(
        "a/b", RepositoryNotFoundError("404"))
    assert "no such revision" in hub_message("a/b@v9", RevisionNotFoundError("404"))


# -- LAION member paths, keys and languages --------------------------------------------------------

def _tar(path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _meta(duration: float = 1.5) -> bytes:
    return json.dumps({"duration": duration, "flash_transcription": "hi", "detailed_caption": "c"}).encode()


def test_members_of_the_same_name_in_different_folders_stay_distinct(tmp_path):
    from ingest.sources.base import Clip, Skip
    from ingest.sources.laion import LaionSource

    stem = "en_ash_intense_anger_rage_fury_hatred_and_annoyance"
    (tmp_path / "laion" / "mirror").mkdir(parents=True)
    _tar(tmp_path / "laion" / f"{stem}.tar", [
        ("000001.mp3", b"top"), ("000001.json", _meta(2.0)),  # the hub's flat layout: key {stem}/000001
        (f"{stem}/000002.json", _meta()), (f"{stem}/000002.mp3", b"folder"),  # its folder layout: {stem}/000002
        ("a/000003.mp3", b"a3"), ("a/000003.json", _meta()),  # two other folders with the same id
        ("b/000003.mp3", b"b3"), ("b/000003.json", _meta()),
        (f"{stem}/000001.mp3", b"again"), (f"{stem}/000001.json", _meta()),  # same id at the top and in the folder
        ("a/000004.mp3", b"x"), ("a/000004.mp3", b"dup"), ("a/000004.json", _meta()),  # a member twice
        ("c/000005.mp3", b"lonely"),  # no json
    ])
    _tar(tmp_path / "laion" / "mirror" / f"{stem}.tar", [("000001.mp3", b"m"), ("000001.json", _meta())])
    src = LaionSource(str(tmp_path / "laion"))
    items = [it for u in src.units() for it in src.read(u)]
    clips = {it.key: it for it in items if isinstance(it, Clip)}
    skips = {it.key: it.reason for it in items if isinstance(it, Skip)}
    assert clips[f"{stem}/000001"].audio == b"top" and clips[f"{stem}/000001"].declared_s == 2.0
    assert clips[f"{stem}/000002"].audio == b"folder"
    assert clips[f"{stem}/a/000003"].audio == b"a3" and clips[f"{stem}/b/000003"].audio == b"b3"
    assert clips[f"{stem}/{stem}/000001"].audio == b"again"
    assert clips[f"{stem}/a/000004"].audio == b"x"
    assert any(r.startswith("duplicate member: a/000004.mp3") for r in skips.values())
    assert skips[f"{stem}/c/000005"].startswith("unpaired")
    # the tar of the same stem in another folder of the input is told apart by its path
    assert clips[f"mirror/{stem}/000001"].audio == b"m"
    keys = [it.key for it in items]
    assert len(keys) == len(set(keys)) and len(items) == 9  # 7 pairs, a repeated member, a lone one


def test_unknown_language_codes_are_refused_before_any_work(corpus):
    from ingest.sources.laion import LaionSource

    with pytest.raises(LakeError) as e:
        LaionSource(str(corpus / "laion"), languages=("en", "xx"))
    assert "unknown code(s) xx" in str(e.value) and "known: de, en, es, fr" in str(e.value)
    assert "in the input: de, en" in str(e.value)
    assert LaionSource(str(corpus / "laion"), languages=("English", "de")).languages == ("en", "de")


# -- damaged tables -------------------------------------------------------------------------------

def test_a_meld_csv_cut_mid_row_keeps_its_other_rows(tmp_path):
    from ingest.sources.base import Clip, Skip
    from ingest.sources.meld import COLUMNS, SPLITS, MeldSource

    for split, (csv_name, folder) in SPLITS.items():
        os.makedirs(tmp_path / folder)
        lines = [",".join(COLUMNS)] + [f'{i},hi {i},Joey,joy,positive,0,{i},1,1,"00:00:01,000","00:00:02,000"'
                                       for i in range(3)]
        text = "\n".join(lines) + "\n"
        if split == "train":
            text += '3,"cut here'  # the file ends inside a quoted field of the last row
        if split == "dev":
            text += "3,short,Joey\n4,ok,Joey,joy,positive,0,4,1,1,x,y\n"  # a row cut short, then a good one
        (tmp_path / csv_name).write_text(text, encoding="utf-8")
        for i in range(5):
            (tmp_path / folder / f"dia0_utt{i}.mp4").write_bytes(b"x")
    src = MeldSource(str(tmp_path))
    by_split = {s: [it for u in src.units() if u.id.startswith(s + ":") for it in src.read(u)] for s in SPLITS}
    train = by_split["train"]
    assert [it.key for it in train if isinstance(it, Clip)] == [f"meld/train/dia0_utt{i}" for i in range(3)]
    (bad,) = [it for it in train if isinstance(it, Skip) and it.reason.startswith("bad csv row")]
    assert "train_sent_emo.csv line 5" in bad.reason and bad.reason.startswith("bad csv row")
    dev = by_split["dev"]
    assert [it.key for it in dev if isinstance(it, Clip)] == [f"meld/dev/dia0_utt{i}" for i in (0, 1, 2, 4)]
    assert [it.reason for it in dev if isinstance(it, Skip) and "bad csv row" in it.reason] == [
        f"bad csv row: {tmp_path / 'dev_sent_emo.csv'} line 5: cut short (3 of 11 fields)"]


def test_tables_name_missing_columns_and_keep_their_good_rows(tmp_path):
    from ingest.sources.table import read_table

    (tmp_path / "m.csv").write_text("file,emotion\na.wav,happy\n")
    with pytest.raises(LakeError, match=r"missing column\(s\) path, label \(it has 'file', 'emotion'\)"):
        read_table(str(tmp_path / "m.csv"), ("path", "label"))
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav", "label": "sad"}\n{"path": "b.wav", "lab\n[1]\n'
                                      '{"path": "", "label": "x"}\n{"path": "c.wav", "label": "joy"}')
    rows = read_table(str(tmp_path / "m.jsonl"), ("path", "label"))
    assert [r.values.get("path") for r in rows if not r.error] == ["a.wav", "c.wav"]
    errors = [r.error for r in rows if r.error]
    assert "line 2: malformed JSON" in errors[0] and "line 3: not a JSON object" in errors[1]
    assert errors[2].endswith("line 4: no path")


# -- segments of a long recording -----------------------------------------------------------------

@pytest.mark.parametrize("fmt,codec,rate", [("wav", "pcm_s16le", 16000), ("mp3", "libmp3lame", 24000),
                                            ("mp4", "aac", 48000)])
def test_a_segment_decodes_to_that_span_of_the_file(tmp_path, fmt, codec, rate):
    from test_decode import write

    from ingest.decode import DecodeError, decode_audio

    t = np.arange(6 * rate) / rate
    sweep = (0.5 * np.sin(2 * np.pi * (200 + 60 * t) * t)).astype(np.float32)[None]  # no two spans alike
    path = write(tmp_path / f"long.{fmt}", sweep, rate, fmt, codec)
    whole = decode_audio(path).wave
    seg = decode_audio(path, start=2.0, end=3.5)
    assert len(seg.wave) == 24000 and abs(seg.duration_s - 1.5) < 1e-9
    ref = whole[32000:56000] / np.abs(whole[32000:56000]).max()
    assert np.corrcoef(ref, seg.wave)[0, 1] > 0.999
    assert len(decode_audio(path, start=5.0).wave) == len(whole) - 80000  # to the end of the file
    with pytest.raises(DecodeError, match="segment past end: the file ends at 6.0"):
        decode_audio(path, start=5.0, end=8.0)
    with pytest.raises(DecodeError, match="segment past end"):
        decode_audio(path, start=7.0, end=8.0)
    with pytest.raises(DecodeError, match="bad segment"):
        decode_audio(path, start=3.0, end=2.0)
