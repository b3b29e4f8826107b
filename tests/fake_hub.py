"""A Hugging Face Hub on 127.0.0.1 for offline tests of `ossrun pull` (HF_ENDPOINT points here).

It answers the requests huggingface_hub makes, with the headers the real Hub sends:
- GET  /api/models/{repo}/tree/{rev}        the file listing (path, size, oid, lfs)
- HEAD /{repo}/resolve/{rev}/{file}          302 to the blob's CDN url with X-Repo-Commit,
                                             X-Linked-Etag and X-Linked-Size (LFS files)
- GET  /cdn/{sha256}                         the bytes (on a second port, the "CDN"), with Range
                                             support (206, Content-Range) and the file's name
                                             in Content-Disposition
Missing repos and files are 404s with X-Error-Code RepoNotFound / EntryNotFound, as on the Hub.
`drop_first_get` makes the first GET of each blob send half its bytes and close the connection;
`stall_first_get` makes it send half and then wait (until `release` is set or the client hangs
up), as a transfer does when its process is interrupted.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.drop_first_get = False
        self.stall_first_get = False
        self.release = threading.Event()
        self._dropped: set[str] = set()
        self._blobs: dict[str, bytes] = {}
        self._names: dict[str, str] = {}  # sha256 -> file name (the CDN's Content-Disposition)
        # Two origins, as on the real Hub: the API and /resolve here, the blobs on a "CDN" (another
        # port), so huggingface_hub reads the metadata off the redirect instead of following it.
        self._servers = []
        for _ in range(2):
            server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True).start()
            self._servers.append(server)
        self.url, self.cdn_url = (f"http://127.0.0.1:{s.server_address[1]}" for s in self._servers)

    def add(self, repo: str, files: dict[str, bytes | Path]) -> None:
        data = {name: (v.read_bytes() if isinstance(v, Path) else v) for name, v in files.items()}
        self.repos[repo] = data
        for name, blob in data.items():
            self._blobs[hashlib.sha256(blob).hexdigest()] = blob
            self._names[hashlib.sha256(blob).hexdigest()] = name.rsplit("/", 1)[-1]

    def gets(self) -> list[tuple[str, str | None]]:
        return [(p, r) for m, p, r in self.requests if m == "GET" and p.startswith("/cdn/")]

    def close(self) -> None:
        self.release.set()
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def _handler(hub):  # noqa: N805 - the handler class closes over the hub
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _reply(self, status, headers=None, body=b"", send_body=True):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def _missing(self, code, message, send_body=True):
                headers = {"X-Error-Code": code, "X-Error-Message": message,
                           "Content-Type": "application/json"}
                if code == "EntryNotFound":
                    headers["X-Repo-Commit"] = COMMIT
                self._reply(404, headers, json.dumps({"error": message}).encode(), send_body)

            def do_HEAD(self):
                self._route(send_body=False)

            def do_GET(self):
                self._route(send_body=True)

            def _route(self, send_body):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path):
                    return self._tree(m[1], send_body)
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                    return self._resolve(m[1], m[3], send_body)
                if m := re.fullmatch(r"/cdn/([0-9a-f]{64})", path):
                    return self._blob(m[1], send_body)
                self._reply(404, {}, b"not found", send_body)

            def _tree(self, repo, send_body):
                files = hub.repos.get(repo)
                if files is None:
                    return self._missing("RepoNotFound", "Repository not found", send_body)
                listing = [{"type": "file", "path": name, "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                            "lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                    "pointerSize": 134}}
                           for name, data in sorted(files.items())]
                self._reply(200, {"Content-Type": "application/json"},
                            json.dumps(listing).encode(), send_body)

            def _resolve(self, repo, name, send_body):
                files = hub.repos.get(repo)
                if files is None:
                    return self._missing("RepoNotFound", "Repository not found", send_body)
                if name not in files:
                    return self._missing("EntryNotFound", f"{name} does not exist", send_body)
                sha = hashlib.sha256(files[name]).hexdigest()
                self._reply(302, {"Location": f"{hub.cdn_url}/cdn/{sha}", "X-Repo-Commit": COMMIT,
                                  "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(files[name])),
                                  "ETag": '"pointer-etag"'}, b"", send_body)

            def _blob(self, sha, send_body):
                data = hub._blobs.get(sha)
                if data is None:
                    return self._reply(404, {}, b"", send_body)
                name = hub._names[sha]  # the name progress bars show, as the Hub's CDN sends it
                start, status, headers = 0, 200, {
                    "Accept-Ranges": "bytes", "ETag": f'"{sha}"',
                    "Content-Disposition": f"inline; filename*=UTF-8''{name}; filename=\"{name}\";"}
                if r := re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or ""):
                    start, status = int(r[1]), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                cut = hub.drop_first_get or hub.stall_first_get
                if send_body and cut and sha not in hub._dropped:
                    hub._dropped.add(sha)  # promise everything, send half, hang up (or stall)
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    if hub.stall_first_get:
                        hub.release.wait(300)
                    self.close_connection = True
                    return
                self._reply(status, headers, body, send_body)

        return Handler
