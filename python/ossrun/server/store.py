"""Stored responses (Responses API `store`, `previous_response_id`, GET /v1/responses/{id}) in a
SQLite file, so that a conversation survives a server restart. One row per response: the
response object and the full input it answered (earlier turns included), both as JSON."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

STORE_FILE = "responses.sqlite3"


def default_store_path() -> Path:
    """<ossrun's data folder>/responses.sqlite3 ($OSSRUN_HOME/data, else the platform's data
    folder as platformdirs computes it; see ossrun.cli.ossrun_dir)."""
    from ..cli import ossrun_dir

    return ossrun_dir("data") / STORE_FILE


class ResponseStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        with self._lock, self._db:
            self._db.execute("CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, "
                             "created REAL NOT NULL, response TEXT NOT NULL, input TEXT NOT NULL)")

    def put(self, response: dict, input_items: list) -> None:
        with self._lock, self._db:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)",
                             (response["id"], time.time(), json.dumps(response),
                              json.dumps(input_items)))

    def get(self, response_id: str) -> tuple[dict, list] | None:
        """(response, input items) or None."""
        with self._lock:
            row = self._db.execute("SELECT response, input FROM responses WHERE id = ?",
                                   (response_id,)).fetchone()
        return None if row is None else (json.loads(row[0]), json.loads(row[1]))

    def close(self) -> None:
        with self._lock:
            self._db.close()
