"""`ossrun pull` and Hub refs as MODEL (python/ossrun/hub.py), offline: `ossrun` runs in a
subprocess with HF_ENDPOINT on tests/fake_hub.py's loopback server and HF_HOME in a temporary
folder, with huggingface_hub itself unchanged. Single and split models, the cache on a second
pull, a download that loses its connection half way, a pull stopped by Ctrl-C that the next
run continues (Range from the kept bytes, progress bar from there), missing repos/files, the
choice of file, and the y/N question of `ossrun info/chat REPO`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import ossrun
import pytest
from fake_hub import COMMIT, FakeHub
from ossrun import hub, model_maker
from ossrun.errors import ModelError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hubmodels")
    single = model_maker.make_model(d / "gpt-oss-tiny-mxfp4.gguf", "tiny", seed=3, use_byte_vocab=True)
    (d / "split").mkdir()
    first = model_maker.make_model(d / "split" / "gpt-oss-tiny", "tiny", seed=4, use_byte_vocab=True,
                                   split_max_size=200_000)
    shards = sorted(first.parent.glob("gpt-oss-tiny-*-of-*.gguf"))
    assert len(shards) >= 2
    return single, shards


@pytest.fixture
def fake(models):
    single, shards = models
    h = FakeHub()
    h.add("acme/tiny-GGUF", {"gpt-oss-tiny-mxfp4.gguf": single, "README.md": b"# tiny\n"})
    h.add("acme/split-GGUF", {f"q8/{p.name}": p for p in shards} | {"config.json": b"{}"})
    h.add("acme/two-GGUF", {"a-Q4_K.gguf": b"GGUF1", "b-Q8_0.gguf": b"GGUF2"})
    h.add("acme/none", {"model.safetensors": b"x"})
    yield h
    h.close()


def _hub_env(fake, tmp_path):
    env = {**os.environ, "HF_ENDPOINT": fake.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1", "NO_COLOR": "1"}
    for k in ("HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_ENABLE_HF_TRANSFER",
              "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(k, None)
    return env


def ossrun_cli(fake, tmp_path, *args, stdin=subprocess.DEVNULL):
    return subprocess.run([sys.executable, "-m", "ossrun", *args], env=_hub_env(fake, tmp_path),
                          stdin=stdin, capture_output=True, text=True, timeout=120)


def test_pull_single_file_then_cache(fake, models, tmp_path):
    r = ossrun_cli(fake, tmp_path, "pull", "acme/tiny-GGUF")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    assert path.endswith(f"models--acme--tiny-GGUF/snapshots/{COMMIT}/gpt-oss-tiny-mxfp4.gguf")
    assert open(path, "rb").read() == models[0].read_bytes()
    assert len(fake.gets()) == 1
    ossrun.load(path, precision="f32").logits(np.arange(4))  # the result loads and runs
    # A second pull finds the blob by its ETag and downloads nothing.
    r = ossrun_cli(fake, tmp_path, "pull", "acme/tiny-GGUF:gpt-oss-tiny-mxfp4.gguf")
    assert r.returncode == 0 and r.stdout.strip() == path
    assert len(fake.gets()) == 1


def test_pull_split_model_gets_every_shard(fake, models, tmp_path):
    shards = models[1]
    r = ossrun_cli(fake, tmp_path, "pull", "acme/split-GGUF")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    assert path.endswith(f"q8/{shards[0].name}")
    assert len(fake.gets()) == len(shards)
    model = ossrun.load(path, precision="f32")
    assert model.logits(np.arange(4)).shape == (4, model.n_vocab)
    # Naming a later shard pulls (here: finds) the same model.
    r = ossrun_cli(fake, tmp_path, "pull", f"acme/split-GGUF:q8/{shards[-1].name}")
    assert r.returncode == 0 and r.stdout.strip() == path and len(fake.gets()) == len(shards)


def test_interrupted_download_resumes(fake, tmp_path):
    # huggingface_hub writes 10 MiB chunks: a 24 MiB file whose connection drops at 12 MiB keeps
    # its first chunk and asks for the rest with a Range request.
    blob = np.random.default_rng(0).bytes(24 << 20)
    fake.add("acme/big-GGUF", {"big.gguf": blob})
    fake.drop_first_get = True  # the server hangs up half way through the first GET
    r = ossrun_cli(fake, tmp_path, "pull", "acme/big-GGUF")
    assert r.returncode == 0, r.stderr
    assert open(r.stdout.strip(), "rb").read() == blob
    (first, no_range), (_, resumed) = fake.gets()
    assert no_range is None and resumed == f"bytes={10 << 20}-"  # resumed, not restarted


def test_interrupted_pull_resumes_on_the_next_run(fake, tmp_path):
    """Ctrl-C during a download (on a terminal, where huggingface_hub shows its progress bar)
    keeps the `.incomplete` blob; the next `ossrun pull` asks for the rest with a Range request
    from where that blob ends (whole 10 MiB chunks were written), so nothing is fetched twice,
    and its progress bar counts on from there to the whole file."""
    import time

    pexpect = pytest.importorskip("pexpect")
    blob = np.random.default_rng(1).bytes(24 << 20)  # 25.2M in tqdm's units
    fake.add("acme/big-GGUF", {"big.gguf": blob})
    fake.stall_first_get = True  # half the bytes, then the transfer hangs until interrupted
    blobs = tmp_path / "hf" / "hub" / "models--acme--big-GGUF" / "blobs"

    # huggingface_hub gives up on a silent transfer after 10 s and retries it with a Range
    # request, which would finish the download before the Ctrl-C on a loaded machine.
    env = {**_hub_env(fake, tmp_path), "HF_HUB_DOWNLOAD_TIMEOUT": "300"}

    def pull_on_a_terminal():
        return pexpect.spawn(sys.executable, ["-m", "ossrun", "pull", "acme/big-GGUF"],
                             env=env, encoding="utf-8", timeout=60,
                             dimensions=(24, 120))

    first = pull_on_a_terminal()
    try:
        first.expect(r"big\.gguf: +\d+%")  # the progress bar
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size >= 10 << 20 for p in blobs.glob("*.incomplete")):
            assert first.isalive() and time.monotonic() < deadline
            time.sleep(0.05)
        first.sendintr()  # Ctrl-C
        first.expect(pexpect.EOF)
        first.close()
    finally:
        first.terminate(force=True)
        fake.release.set()
    assert first.exitstatus == 130 and "again continues the download" in first.before
    (partial,) = blobs.glob("*.incomplete")
    kept = partial.stat().st_size
    assert kept == 10 << 20  # huggingface_hub writes 10 MiB chunks

    second = pull_on_a_terminal()
    second.expect(r"big\.gguf: +\d+%.*10\.5M/25\.2M")  # starts at the kept bytes
    second.expect(r"25\.2M/25\.2M")
    second.expect(pexpect.EOF)
    second.close()
    assert second.exitstatus == 0, second.before
    path = next(line for line in second.before.splitlines() if line.strip().endswith("big.gguf"))
    assert open(path.strip(), "rb").read() == blob
    (_, no_range), (_, resumed) = fake.gets()
    assert no_range is None and resumed == f"bytes={kept}-"  # resumed, not restarted
    assert not list(blobs.glob("*.incomplete"))


@pytest.mark.parametrize(("ref", "message"), [
    ("acme/absent", "acme/absent: no such model repo on the Hugging Face Hub"),
    ("acme/tiny-GGUF:other.gguf", "acme/tiny-GGUF has no file 'other.gguf' on the Hub"),
    ("acme/none", "acme/none has no GGUF file on the Hub"),
    ("acme/two-GGUF", "acme/two-GGUF holds 2 GGUF models; choose one:\n"
                      "  ossrun pull acme/two-GGUF:a-Q4_K.gguf\n  ossrun pull acme/two-GGUF:b-Q8_0.gguf"),
    ("not a repo", "is not a Hugging Face repo"),
])
def test_pull_errors(fake, tmp_path, ref, message):
    r = ossrun_cli(fake, tmp_path, "pull", ref)
    assert r.returncode == 1
    assert message in r.stderr and "Traceback" not in r.stderr


def test_model_argument_from_the_hub_asks_first(fake, tmp_path):
    # Not on a terminal: no question, a pointer to `ossrun pull`.
    r = ossrun_cli(fake, tmp_path, "chat", "acme/tiny-GGUF")
    assert r.returncode == 1 and "run `ossrun pull acme/tiny-GGUF` first" in r.stderr
    assert not fake.gets()
    pexpect = pytest.importorskip("pexpect")
    env = {**os.environ, "HF_ENDPOINT": fake.url, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    child = pexpect.spawn(sys.executable, ["-m", "ossrun", "info", "acme/tiny-GGUF"], env=env,
                          encoding="utf-8", timeout=60)
    child.expect(r"Download gpt-oss-tiny-mxfp4.gguf \(0.0 GiB\) from acme/tiny-GGUF on the "
                 r"Hugging Face Hub\? \[y/N\] ")
    child.sendline("n")
    child.expect("not downloaded")
    child.wait()
    assert not fake.gets()
    child = pexpect.spawn(sys.executable, ["-m", "ossrun", "info", "acme/tiny-GGUF"], env=env,
                          encoding="utf-8", timeout=60)
    child.expect(r"\[y/N\] ")
    child.sendline("y")
    child.expect("architecture +gpt-oss")
    child.wait()
    assert len(fake.gets()) == 1
    # Once cached, the name works without asking, and without a terminal.
    r = ossrun_cli(fake, tmp_path, "info", "acme/tiny-GGUF", "--json")
    assert r.returncode == 0 and '"architecture": "gpt-oss"' in r.stdout
    assert len(fake.gets()) == 1


# --------------------------------------------------------------------------- no network


def test_parse_ref_and_shards():
    assert hub.parse_ref("ggml-org/gpt-oss-20b-GGUF") == hub.HubRef("ggml-org/gpt-oss-20b-GGUF")
    assert hub.parse_ref("o/r:d/m.gguf") == hub.HubRef("o/r", "d/m.gguf")
    for bad in ("gpt-oss:20b", "a/b/c", "o/r:README.md", "/abs/path", "o/r--x"):
        with pytest.raises(ValueError):
            hub.parse_ref(bad)
    assert hub.shard_files("d/m-00002-of-00003.gguf") == [
        "d/m-00001-of-00003.gguf", "d/m-00002-of-00003.gguf", "d/m-00003-of-00003.gguf"]
    assert hub.shard_files("m.gguf") == ["m.gguf"]
    assert not hub.looks_like_ref("gpt-oss:20b") and not hub.looks_like_ref("models/x.gguf")
    assert hub.looks_like_ref("ggml-org/gpt-oss-120b-GGUF")


def test_choose_file():
    split = [f"gpt-oss-120b-mxfp4-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert hub.choose_file(["README.md", *split], "r") == split[0]
    assert hub.choose_file(["x-Q8_0.gguf", "x-MXFP4.gguf"], "r") == "x-MXFP4.gguf"
    with pytest.raises(ModelError, match="holds 2 GGUF models"):
        hub.choose_file(["x-Q8_0.gguf", "x-Q4_K.gguf"], "r")
