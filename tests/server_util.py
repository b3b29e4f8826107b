"""Starting `ossrun serve` as a subprocess on a free loopback port, for the server tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx

API_KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running server: `url` (…/v1 is the API), `stop()`; output in `log`."""

    def __init__(self, model_path, tmp_path, *args, script: dict | None = None, api_key=API_KEY,
                 wait: bool = True, env: dict | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = self.base + "/v1"
        self.api_key = api_key
        self.log = tmp_path / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "ossrun", "serve", str(model_path), "--port", str(self.port),
               "--store", str(tmp_path / "responses.sqlite3"), *map(str, args)]
        if script is not None:
            path = tmp_path / "script.json"
            path.write_text(json.dumps(script))
            cmd += ["--test-script", str(path)]
        full_env = {**os.environ, "OSSRUN_HOME": str(tmp_path / "home"), **(env or {})}
        full_env.pop("OSSRUN_API_KEY", None)
        if api_key:
            full_env["OSSRUN_API_KEY"] = api_key
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                     env=full_env)
        if wait:
            self.wait_ready()

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.log.read_text()}")
            try:
                if httpx.get(self.base + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.log.read_text()}")

    def health(self) -> dict:
        return httpx.get(self.base + "/health", timeout=5).json()

    def client(self, **kwargs):
        import openai

        return openai.OpenAI(base_url=self.url, api_key=self.api_key or "unused", max_retries=0,
                             **{"timeout": 60, **kwargs})

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def sse_events(text: str) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event in a response body; checks the framing."""
    assert text.endswith("\n\n"), "an SSE body ends with a blank line"
    out = []
    for block in text.split("\n\n")[:-1]:
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            assert field in ("event", "data"), f"unexpected SSE line {line!r}"
            if field == "event":
                name = value
            else:
                data.append(value)
        assert len(data) == 1, "one data line per event"
        out.append((name, data[0]))
    return out
