"""Model names and folders (ossrun.resolve): Ollama names through fake Ollama stores, folders such
as Hugging Face cache snapshots and LM Studio's, `ossrun list` over all three stores, and
`ossrun info` on what they hold. Every store is built in tmp_path with the env vars (and HOME)
pointed at it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import ossrun
import pytest
from ossrun import ModelError, cli, model_maker
from ossrun.resolve import find_local_models, resolve_model

HEX = "ab" * 32


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """One tiny model (the same weights) as a ggml-org file, an Ollama blob and 3 shards."""
    d = tmp_path_factory.mktemp("made")
    hp = model_maker.preset("tiny", layers=2)
    kw = dict(seed=3, matrix_type="bf16")
    single = model_maker.write_model(d / "gpt-oss-tiny.gguf", hp, **kw)
    blob = model_maker.write_model(d / "blob.gguf", hp, layout="ollama", **kw)
    first = model_maker.write_model(d / "split.gguf", hp, split_max_size=60_000, **kw)
    shards = sorted(d.glob("split-*-of-*.gguf"))
    assert len(shards) >= 3 and first == shards[0]
    llama = d / "llama.gguf"  # a GGUF of another architecture, which searches must pass over
    w = gguf.GGUFWriter(str(llama), arch="llama")
    w.add_tensor("token_embd.weight", np.zeros((4, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return {"single": single, "blob": blob, "shards": shards, "llama": llama}


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME with no store env vars: each test adds the stores it needs."""
    for var in ("OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def ollama_store(root: Path, blob: Path, name=("library", "gpt-oss", "20b"), digest_hex=None):
    """An Ollama store holding `blob` as model `name`, as `ollama pull` leaves it."""
    digest_hex = digest_hex or hashlib.sha256(blob.read_bytes()).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    shutil.copy(blob, root / "blobs" / f"sha256-{digest_hex}")
    config = json.dumps({"model_format": "gguf", "model_family": "gptoss"}).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    (root / "blobs" / f"sha256-{config_hex}").write_bytes(config)
    manifest = root / "manifests" / "registry.ollama.ai" / Path(*name)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": f"sha256:{config_hex}", "size": len(config)},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model",
             "digest": f"sha256:{digest_hex}", "size": blob.stat().st_size},
            {"mediaType": "application/vnd.ollama.image.template", "digest": f"sha256:{HEX}",
             "size": 10},
        ],
    }))
    return manifest


def hf_cache(root: Path, repo: str, files: list[Path], revision="0123abcd") -> Path:
    """A huggingface_hub cache entry: blobs by hash, snapshot files as relative links to them."""
    entry = root / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / revision
    (entry / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    (entry / "refs").mkdir(exist_ok=True)
    (entry / "refs" / "main").write_text(revision)
    for f in files:
        h = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copy(f, entry / "blobs" / h)
        os.symlink(Path("..", "..", "blobs", h), snapshot / f.name)
    return snapshot


def test_ollama_name(made, home, tmp_path, monkeypatch):
    store = tmp_path / "ollama"
    ollama_store(store, made["blob"])
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    path = resolve_model("gpt-oss:20b")
    assert path.parent == store / "blobs" and path.name.startswith("sha256-")
    tokens = np.arange(1, 20)
    m = ossrun.load("gpt-oss:20b", precision="f32")
    assert m.path == path and m._file.layout.name == "ollama"
    assert np.array_equal(m.logits(tokens), ossrun.load(made["single"], precision="f32").logits(tokens))


def test_ollama_default_store_namespace_and_tag(made, home):
    ollama_store(home / ".ollama" / "models", made["blob"], ("someone", "gpt-oss", "latest"))
    assert resolve_model("someone/gpt-oss").parent == home / ".ollama" / "models" / "blobs"
    assert resolve_model("someone/gpt-oss:latest") == resolve_model("someone/gpt-oss")


def test_unknown_ollama_name(home):
    with pytest.raises(ModelError, match=r"no Ollama model 'gpt-oss:120b'.*ollama pull gpt-oss:120b"):
        ossrun.load("gpt-oss:120b")


def test_ollama_manifest_without_its_blob(made, home, tmp_path, monkeypatch):
    store = tmp_path / "ollama"
    manifest = ollama_store(store, made["blob"], digest_hex="cd" * 32)
    (store / "blobs" / f"sha256-{'cd' * 32}").unlink()
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    with pytest.raises(ModelError) as e:
        resolve_model("gpt-oss:20b")
    assert str(manifest) in str(e.value) and f"sha256-{'cd' * 32}" in str(e.value)
    assert "missing" in str(e.value)


@pytest.mark.parametrize("text,needle", [
    ("{not json", "not a readable Ollama manifest"),
    ('{"layers": []}', "0 model layers"),
    ('{"layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": "md5:00"}]}',
     "is not sha256"),
])
def test_malformed_ollama_manifest(made, home, tmp_path, monkeypatch, text, needle):
    store = tmp_path / "ollama"
    manifest = ollama_store(store, made["blob"])
    manifest.write_text(text)
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    with pytest.raises(ModelError, match=needle) as e:
        ossrun.load("gpt-oss:20b")
    assert str(manifest) in str(e.value)


def test_hf_snapshot_folder_with_a_split_model(made, home, tmp_path):
    snapshot = hf_cache(tmp_path / "hub", "ggml-org/gpt-oss-120b-GGUF", made["shards"])
    path = resolve_model(snapshot)
    assert path == snapshot / made["shards"][0].name
    m = ossrun.load(snapshot)  # the folder itself loads: all shards, through the links
    assert len(m._file.paths) == len(made["shards"])
    # The repo folder above the snapshot works too.
    assert resolve_model(snapshot.parent.parent) == path


def test_folder_with_other_files(made, home, tmp_path):
    folder = tmp_path / "lmstudio" / "lmstudio-community" / "gpt-oss-20b-GGUF"
    folder.mkdir(parents=True)
    shutil.copy(made["llama"], folder / "llama-3.gguf")
    shutil.copy(made["single"], folder / "gpt-oss-20b-MXFP4.gguf")
    (folder / "README.md").write_text("hi")
    assert resolve_model(tmp_path / "lmstudio") == folder / "gpt-oss-20b-MXFP4.gguf"


def test_folder_with_two_models(made, tmp_path):
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(made["single"], tmp_path / name)
    with pytest.raises(ModelError, match="holds 2 gpt-oss GGUF files") as e:
        ossrun.load(tmp_path)
    assert str(tmp_path / "a.gguf") in str(e.value) and str(tmp_path / "b.gguf") in str(e.value)


def test_folder_without_a_model(made, tmp_path):
    shutil.copy(made["llama"], tmp_path / "llama.gguf")
    with pytest.raises(ModelError, match="no gpt-oss GGUF file lies in this folder"):
        ossrun.load(tmp_path)


def test_list(made, home, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    hf_cache(tmp_path / "hf" / "hub", "ggml-org/gpt-oss-120b-GGUF", made["shards"])
    hf_cache(tmp_path / "hf" / "hub", "meta/llama", [made["llama"]])
    store = tmp_path / "ollama"
    ollama_store(store, made["blob"])
    ollama_store(store, made["llama"], ("library", "llama3", "latest"))
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    lms = home / ".lmstudio" / "models" / "lmstudio-community" / "gpt-oss-20b-GGUF"
    lms.mkdir(parents=True)
    shutil.copy(made["single"], lms / "gpt-oss-20b-MXFP4.gguf")
    cached = home / ".cache" / "lm-studio" / "models" / "x"
    cached.mkdir(parents=True)
    shutil.copy(made["single"], cached / "other.gguf")

    found = {(m.source, m.name): m for m in find_local_models()}
    split_name = f"ggml-org/gpt-oss-120b-GGUF:{made['shards'][0].name}"
    assert set(found) == {("huggingface", split_name), ("ollama", "gpt-oss:20b"),
                          ("lm-studio", str(lms / "gpt-oss-20b-MXFP4.gguf")),
                          ("lm-studio", str(cached / "other.gguf"))}
    split = found[("huggingface", split_name)]
    n = len(made["shards"])
    assert split.layout == f"ggml-org, split in {n} shards"
    assert split.size == sum(s.stat().st_size for s in made["shards"])
    assert found[("ollama", "gpt-oss:20b")].layout == "ollama"
    assert found[("ollama", "gpt-oss:20b")].size == made["blob"].stat().st_size

    assert cli.main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {(m["source"], m["name"]) for m in listed} == set(found)
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gpt-oss:20b" in out and f"split in {n} shards" in out and split_name in out


def test_list_with_no_stores(home, capsys):
    assert cli.main(["list"]) == 0
    assert "no gpt-oss models found" in capsys.readouterr().err


def test_info_says_the_layout(made, home, tmp_path, monkeypatch, capsys):
    store = tmp_path / "ollama"
    ollama_store(store, made["blob"])
    monkeypatch.setenv("OLLAMA_MODELS", str(store))
    info = cli.describe("gpt-oss:20b", None, 1)
    # 2 layers: token_embd, output and q, k, v, out per layer in BF16; 3 expert stacks per layer.
    assert info["layout"] == "ollama" and len(info["shards"]) == 1
    assert info["tensor_types"]["MXFP4"]["count"] == 6 and info["tensor_types"]["BF16"]["count"] == 10
    split = cli.describe(made["shards"][1], None, 1)
    assert split["layout"] == "ggml-org" and split["shards"] == [str(s) for s in made["shards"]]
    assert split["file_size"] == sum(s.stat().st_size for s in made["shards"])
    assert cli.main(["info", str(made["shards"][1])]) == 0
    out = capsys.readouterr().out
    assert f"ggml-org, split in {len(made['shards'])} shards" in out
    assert cli.main(["info", "gpt-oss:20b"]) == 0
    out = capsys.readouterr().out
    assert "layout        ollama" in out and "MXFP4       6 tensors" in out
