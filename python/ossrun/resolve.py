"""What a MODEL argument names: a GGUF file, a folder holding one, or a model in Ollama's store;
and which gpt-oss models lie in the stores other tools keep on this machine (`ossrun list`).

- A file is itself (any shard of a split model: the loader opens the others).
- A folder (a Hugging Face cache snapshot, an LM Studio models folder, any directory) is searched
  a few levels deep for gpt-oss GGUF files; the first shard stands for a split model. One must
  be found; several are an error that lists them.
- A name like `gpt-oss:20b` or `library/gpt-oss:120b` that is no path is looked up in Ollama's
  store ($OLLAMA_MODELS, default ~/.ollama/models): the manifest
  `manifests/registry.ollama.ai/<namespace>/<model>/<tag>` (namespace `library`, tag `latest`
  by default) is JSON whose layer of mediaType `application/vnd.ollama.image.model` names the
  blob `blobs/sha256-<hex>` by its digest.

Stores scanned by `find_local_models`: the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub,
else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub; `models--OWNER--REPO/
snapshots/<revision>/`), Ollama's store, and LM Studio's ~/.lmstudio/models and
~/.cache/lm-studio/models.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError
from .gguf_split import split_name

OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
GPT_OSS_ARCHS = ("gpt-oss", "gptoss")  # ggml-org's and Ollama's architecture names
SEARCH_DEPTH = 6  # folder levels searched below a MODEL folder (HF cache: 4 are needed)
_MAX_MANIFEST = 1 << 20
# [host/][namespace/]model[:tag], Ollama's name syntax.
_OLLAMA_NAME = re.compile(r"^(?:[\w.-]+/){0,2}[\w.-]+(?::[\w.-]+)?$")


# ---------------------------------------------------------------------------------------------
# Resolving a MODEL argument


def resolve_model(spec) -> Path:
    """The GGUF file `spec` names (see the module docstring); ModelError when there is none."""
    path = Path(os.fspath(spec)).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        found = gpt_oss_files(path)
        if not found:
            raise ModelError(f"{path}: not a regular file, and no gpt-oss GGUF file lies in this "
                             f"folder (searched {SEARCH_DEPTH} levels deep)")
        if len(found) > 1:
            listed = "\n  ".join(str(p) for p in found)
            raise ModelError(f"{path}: this folder holds {len(found)} gpt-oss GGUF files; name "
                             f"one of them:\n  {listed}")
        return found[0]
    if path.exists():
        raise ModelError(f"{path}: not a regular file")
    text = os.fspath(spec)
    if isinstance(text, str) and looks_like_ollama_name(text):
        blob = ollama_blob(text)
        if blob is not None:
            return blob
        raise ModelError(f"{path}: no such file, and no Ollama model {text!r} in "
                         f"{ollama_models_dir()} (`ollama pull {text}` fetches it)")
    raise ModelError(f"{path}: no such file")


def looks_like_ollama_name(text: str) -> bool:
    return bool(_OLLAMA_NAME.match(text)) and not text.endswith(".gguf")


def ollama_models_dir() -> Path:
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def ollama_manifest_path(name: str, store: Path | None = None) -> Path:
    """Where Ollama keeps the manifest of `name` (`gpt-oss:20b` -> .../library/gpt-oss/20b)."""
    store = ollama_models_dir() if store is None else store
    model, _, tag = name.partition(":")
    parts = model.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_REGISTRY, *parts]
    return store.joinpath("manifests", *parts, tag or "latest")


def ollama_blob(name: str, store: Path | None = None) -> Path | None:
    """The model blob of Ollama model `name`, or None when the store has no such model.

    Raises ModelError when the manifest exists but is malformed or its blob is missing."""
    store = ollama_models_dir() if store is None else store
    manifest = ollama_manifest_path(name, store)
    if not manifest.is_file():
        return None
    return _blob_of_manifest(manifest, store)


def _blob_of_manifest(manifest: Path, store: Path) -> Path:
    try:
        if manifest.stat().st_size > _MAX_MANIFEST:
            raise ValueError("too large for a manifest")
        layers = json.loads(manifest.read_text(encoding="utf-8"))["layers"]
        digests = [layer["digest"] for layer in layers
                   if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{manifest}: not a readable Ollama manifest ({e})") from None
    if len(digests) != 1:
        raise ModelError(f"{manifest}: an Ollama manifest with {len(digests)} model layers "
                         f"(mediaType {OLLAMA_MODEL_LAYER}); expected one")
    digest = digests[0]
    algo, _, hexdigest = str(digest).partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexdigest):
        raise ModelError(f"{manifest}: model layer digest {digest!r} is not sha256:<64 hex digits>")
    for blob in (store / "blobs" / f"sha256-{hexdigest}", store / "blobs" / f"sha256:{hexdigest}"):
        if blob.is_file():
            return blob
    raise ModelError(f"{manifest}: its model blob {store / 'blobs' / f'sha256-{hexdigest}'} is "
                     "missing (re-pull the model with Ollama)")


def gpt_oss_files(folder: Path, depth: int = SEARCH_DEPTH) -> list[Path]:
    """gpt-oss GGUF files below `folder` (first shards only for split models), sorted; the same
    file reached through two links counts once."""
    found, seen = [], set()
    for path in sorted(_gguf_files(folder, depth)):
        split = split_name(path)
        if split is not None and split[1] != 0:
            continue
        real = path.resolve()
        if real in seen or architecture(path) not in GPT_OSS_ARCHS:
            continue
        seen.add(real)
        found.append(path)
    return found


def _gguf_files(folder: Path, depth: int):
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for e in entries:
        if e.name.startswith("."):
            continue
        path = Path(e.path)
        if e.name.lower().endswith(".gguf") and path.is_file():
            yield path
        elif depth > 0 and e.is_dir():  # follows links, as HF snapshots are
            yield from _gguf_files(path, depth - 1)


def architecture(path: Path) -> str | None:
    """general.architecture of a GGUF file, or None when it is no readable GGUF."""
    from .gguf_reader import GgufFile

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
        return GgufFile(path).metadata.get("general.architecture")
    except (OSError, ValueError, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# `ossrun list`


@dataclass
class LocalModel:
    source: str  # "huggingface", "ollama" or "lm-studio"
    name: str  # what to pass as MODEL: OWNER/REPO:FILE, an Ollama name, or the path
    path: Path  # the file (first shard of a split model)
    size: int  # bytes, all shards together
    layout: str  # "ggml-org", "ollama", "..., split in N shards", or why ossrun cannot use it

    def to_dict(self) -> dict:
        return {"source": self.source, "name": self.name, "path": str(self.path),
                "size": self.size, "layout": self.layout}


def hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def lm_studio_dirs() -> list[Path]:
    return [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]


def find_local_models() -> list[LocalModel]:
    """Every gpt-oss GGUF in the Hugging Face cache, Ollama's store and LM Studio's folders."""
    return _hf_models() + _ollama_models() + _lm_studio_models()


def describe_file(path: Path) -> tuple[int, str]:
    """(bytes of all shards, layout text) of a gpt-oss GGUF file."""
    from . import layouts
    from .gguf_split import open_shards

    try:
        shards = open_shards(path)
        size = shards.size
        text = layouts.detect(shards, path).name
    except ModelError as e:
        size = path.stat().st_size
        reason = str(e)
        if "August-October 2025" in reason:
            return size, "ollama (Aug-Oct 2025 fused blob: re-pull it)"
        return size, "unusable: " + reason.split(": ", 1)[-1][:80]
    if shards.n_shards > 1:
        text += f", split in {shards.n_shards} shards"
    return size, text


def _entry(source: str, name: str, path: Path) -> LocalModel:
    size, layout = describe_file(path)
    return LocalModel(source, name, path, size, layout)


def _hf_models() -> list[LocalModel]:
    out = []
    cache = hf_hub_cache()
    for repo in sorted(cache.glob("models--*--*")):
        owner_repo = repo.name[len("models--"):].replace("--", "/", 1)
        snapshots = repo / "snapshots"
        main = repo / "refs" / "main"
        try:
            revisions = [snapshots / main.read_text().strip()] if main.is_file() else []
        except OSError:
            revisions = []
        if not revisions or not revisions[0].is_dir():
            revisions = sorted(p for p in snapshots.glob("*") if p.is_dir())
        for rev in revisions:
            for path in gpt_oss_files(rev):
                out.append(_entry("huggingface", f"{owner_repo}:{path.relative_to(rev).as_posix()}",
                                  path))
    return out


def _ollama_models() -> list[LocalModel]:
    store = ollama_models_dir()
    root = store / "manifests"
    out = []
    for manifest in sorted(p for p in root.glob("*/*/*/*") if p.is_file()):
        host, namespace, model, tag = manifest.relative_to(root).parts
        name = f"{model}:{tag}" if (host, namespace) == (OLLAMA_REGISTRY, "library") else (
            f"{namespace}/{model}:{tag}" if host == OLLAMA_REGISTRY else f"{host}/{namespace}/{model}:{tag}")
        try:
            blob = _blob_of_manifest(manifest, store)
        except ModelError:
            continue  # not a model, or a broken entry: Ollama's own business
        if architecture(blob) in GPT_OSS_ARCHS:
            out.append(_entry("ollama", name, blob))
    return out


def _lm_studio_models() -> list[LocalModel]:
    out, seen = [], set()
    for folder in lm_studio_dirs():
        for path in gpt_oss_files(folder):
            if path.resolve() not in seen:
                seen.add(path.resolve())
                out.append(_entry("lm-studio", str(path), path))
    return out
