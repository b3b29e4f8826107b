"""`ossrun pull`: gpt-oss GGUF files from the Hugging Face Hub, into huggingface_hub's own cache.

A reference is `OWNER/REPO` or `OWNER/REPO:FILE`. Without FILE the repo's files are listed and
the gpt-oss GGUF is chosen: the only model file, else the only MXFP4 one; anything else is an
error that lists the candidates. A split GGUF (`NAME-00001-of-0000N.gguf`) is pulled with all its
shards. Each file's bytes are fetched into huggingface_hub's cache as its own blob
(`blobs/<etag>`), through huggingface_hub's HTTP download (progress bar, retries with HTTP Range
within a run), from a `blobs/<etag>.incomplete` file that an interrupted run leaves behind: the
next `ossrun pull` asks for the rest only. (huggingface_hub's own hf_hub_download, since 1.x,
writes each run to a fresh temporary file and deletes it when interrupted, so it resumes only
within one run.) Then `hf_hub_download` links the blob into the snapshot as it does for its own
downloads. HF_ENDPOINT, HF_HOME / HF_HUB_CACHE, HF_TOKEN and offline mode are honoured, and a
file that is already cached is not downloaded again.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError, OssrunError
from .gguf_split import shard_path, split_name

# Hub repo ids: `owner/name`, letters, digits, '-', '_', '.' (no '--' or '..' at the ends).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]$")


@dataclass(frozen=True)
class HubRef:
    repo: str
    file: str | None = None

    def __str__(self) -> str:
        return self.repo if self.file is None else f"{self.repo}:{self.file}"


def parse_ref(text: str) -> HubRef:
    """`OWNER/REPO[:FILE]` -> HubRef; ValueError on anything else."""
    repo, _, file = text.partition(":")
    if not _REPO_ID.match(repo) or ".." in repo or "--" in repo:
        raise ValueError(f"{text!r} is not a Hugging Face repo (OWNER/REPO or OWNER/REPO:FILE)")
    if file and not file.endswith(".gguf"):
        raise ValueError(f"{text!r}: FILE must be a .gguf file in the repo")
    return HubRef(repo, file or None)


def looks_like_ref(text: str) -> bool:
    """True for an argument that is no local path but reads as `OWNER/REPO[:FILE]`."""
    if Path(text).expanduser().exists():
        return False
    try:
        ref = parse_ref(text)
    except ValueError:
        return False
    return ref.file is not None or not ref.repo.endswith(".gguf")


def shard_files(file: str) -> list[str]:
    """The file, or every shard of a split GGUF given by any one of its shards (repo paths)."""
    split = split_name(Path(file))
    if split is None:
        return [file]
    prefix, _, count = split
    folder = str(Path(file).parent)
    names = [shard_path(prefix.name, no, count).name for no in range(count)]
    return [n if folder == "." else f"{folder}/{n}" for n in names]


def choose_file(files: list[str], repo: str) -> str:
    """The repo's gpt-oss GGUF (the first shard of a split one); ModelError when there is none
    or the choice is ambiguous."""
    models = []
    for f in files:
        if not f.endswith(".gguf"):
            continue
        split = split_name(Path(f))
        if split is None or split[1] == 0:
            models.append(f)
    if not models:
        raise ModelError(f"{repo} has no GGUF file on the Hub")
    if len(models) > 1:
        mxfp4 = [f for f in models if "mxfp4" in Path(f).name.lower()]
        if len(mxfp4) != 1:
            listing = "\n  ".join(f"ossrun pull {repo}:{f}" for f in sorted(models))
            raise ModelError(f"{repo} holds {len(models)} GGUF models; choose one:\n  {listing}")
        models = mxfp4
    return models[0]


def _errors():
    from huggingface_hub import errors

    return errors


def _hub_error(e: Exception, ref: HubRef, file: str | None) -> OssrunError:
    """huggingface_hub's exceptions as one clear sentence."""
    errors = _errors()
    if isinstance(e, errors.RepositoryNotFoundError):
        return ModelError(f"{ref.repo}: no such model repo on the Hugging Face Hub (or it is private "
                          "or gated: log in with `hf auth login` or set HF_TOKEN)")
    if isinstance(e, errors.RevisionNotFoundError):
        return ModelError(f"{ref.repo}: the revision does not exist on the Hub")
    if isinstance(e, errors.EntryNotFoundError) and not isinstance(e, errors.LocalEntryNotFoundError):
        return ModelError(f"{ref.repo} has no file {file!r} on the Hub")
    if isinstance(e, errors.LocalEntryNotFoundError):
        return OssrunError(f"cannot reach the Hugging Face Hub for {ref} and it is not in the "
                           "local cache; check the network (or HF_ENDPOINT)")
    if isinstance(e, errors.HfHubHTTPError):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return OssrunError(f"the Hugging Face Hub refused {ref}: {first}")
    return OssrunError(f"downloading {ref} failed: {e}")


def list_files(ref: HubRef, revision: str | None = None) -> dict[str, int | None]:
    """Repo path -> size in bytes, from the Hub."""
    from huggingface_hub import HfApi

    try:
        tree = HfApi().list_repo_tree(ref.repo, revision=revision, recursive=True)
        return {f.path: getattr(f, "size", None) for f in tree if hasattr(f, "size")}
    except Exception as e:
        raise _hub_error(e, ref, None) from None


def pull(ref: str | HubRef, *, revision: str | None = None) -> Path:
    """Download the referenced GGUF (all shards) into the Hugging Face cache; returns the local
    path of the file (of the first shard of a split model)."""
    from huggingface_hub import hf_hub_download

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    file = ref.file or choose_file(list(list_files(ref, revision)), ref.repo)
    paths = []
    for name in shard_files(file):
        try:
            _fetch_blob(ref.repo, name, revision)
            paths.append(Path(hf_hub_download(ref.repo, name, revision=revision)))
        except Exception as e:
            raise _hub_error(e, ref, name) from None
    return paths[0]


def _fetch_blob(repo: str, name: str, revision: str | None) -> None:
    """Download the file's blob into the cache unless it is there, continuing a partial
    `.incomplete` one. Leaves anything it cannot do (no Hub, no ETag or size) to hf_hub_download,
    which then serves the cache, fetches the file itself or says what is wrong."""
    import os
    from urllib.parse import urlparse

    from filelock import FileLock
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, name, revision=revision)
    try:
        meta = get_hf_file_metadata(url)
    except Exception:
        return
    if not meta.etag or meta.size is None:
        return
    folder = repo_folder_name(repo_id=repo, repo_type="model")
    blobs = Path(constants.HF_HUB_CACHE) / folder / "blobs"
    blob = blobs / meta.etag
    if blob.exists():
        return
    headers = build_hf_headers()
    source = url
    if meta.xet_file_data is None and meta.location and meta.location != url:
        source = meta.location  # the signed CDN url: no token there
        if urlparse(source).netloc != urlparse(url).netloc:
            headers.pop("authorization", None)
    locks = Path(constants.HF_HUB_CACHE) / ".locks" / folder
    blobs.mkdir(parents=True, exist_ok=True)
    locks.mkdir(parents=True, exist_ok=True)
    part = blobs / f"{meta.etag}.incomplete"
    with FileLock(str(locks / f"{meta.etag}.ossrun.lock")):  # two pulls of one file: one fetches
        if blob.exists():
            return
        with open(part, "ab") as f:
            have = f.tell()
            if have > meta.size:  # not a prefix of this blob
                f.truncate(0)
                have = 0
            http_get(source, f, resume_size=have, headers=headers, expected_size=meta.size,
                     displayed_filename=name.rsplit("/", 1)[-1])
        os.replace(part, blob)


def cached(ref: str | HubRef, *, revision: str | None = None) -> Path | None:
    """The local path of the referenced model when every file of it is in the cache, else None.
    Touches no network."""
    from huggingface_hub import snapshot_download

    ref = parse_ref(ref) if isinstance(ref, str) else ref
    errors = _errors()
    try:
        snapshot = Path(snapshot_download(ref.repo, revision=revision, local_files_only=True,
                                          allow_patterns=[ref.file] if ref.file else ["*.gguf"]))
    except (errors.LocalEntryNotFoundError, errors.HfHubHTTPError, OSError, ValueError):
        return None
    files = [p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*.gguf")]
    try:
        file = ref.file or choose_file(files, ref.repo)
    except ModelError:
        return None
    needed = shard_files(file)
    if not all((snapshot / f).is_file() for f in needed):
        return None
    return snapshot / needed[0]


def resolve(text: str, *, interactive: bool, ask=input) -> Path:
    """A model argument that reads as a Hub ref -> its local path, pulling it on first use after
    a y/N question (`ossrun chat ggml-org/gpt-oss-20b-GGUF`). Non-interactive callers get an
    error that says to run `ossrun pull`."""
    ref = parse_ref(text)
    path = cached(ref)
    if path is not None:
        return path
    if not interactive:
        raise OssrunError(f"{ref} is not downloaded yet; run `ossrun pull {ref}` first")
    sizes = list_files(ref)
    file = ref.file or choose_file(list(sizes), ref.repo)
    total = sum(sizes.get(f) or 0 for f in shard_files(file))
    size = f" ({total / 2**30:.1f} GiB)" if total else ""
    answer = ask(f"Download {file}{size} from {ref.repo} on the Hugging Face Hub? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise OssrunError("not downloaded")
    path = pull(HubRef(ref.repo, file))
    print(path, file=sys.stderr)
    return path
