"""Offline search over the user's own documents for the browser tool: a folder of HTML, Markdown,
text and PDF files indexed in SQLite FTS5 (bm25 ranking), refreshed when files change."""

from __future__ import annotations

import io
import sqlite3
import threading
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm"}
PDF_SUFFIXES = {".pdf"}
MAX_FILE_BYTES = 20 * 1024 * 1024


def pdf_text(data: bytes) -> str:
    """The text of a PDF (pypdf), pages separated by blank lines."""
    from pypdf import PdfReader

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except Exception as e:  # noqa: BLE001 -- a broken PDF is a document without text
        return f"(the PDF could not be read: {e})"


def document_text(path: Path) -> tuple[str, str]:
    """(title, text) of a document; HTML keeps its link references (see browser.html_page)."""
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return path.name, pdf_text(path.read_bytes())
    raw = path.read_text(encoding="utf-8", errors="replace")
    if suffix in HTML_SUFFIXES:
        from .browser import html_page

        page = html_page(path.as_uri(), raw)
        return page.title, "\n".join(page.lines)
    if suffix in (".md", ".markdown"):
        first = next((ln for ln in raw.splitlines() if ln.startswith("# ")), None)
        return (first[2:].strip() if first else path.name), raw
    return path.name, raw


class DocumentIndex:
    """An FTS5 index of the documents under `folder` (kept in memory, rebuilt for files whose
    size or modification time changed)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser().resolve()
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.execute("CREATE VIRTUAL TABLE docs USING fts5(path UNINDEXED, title, body)")
        self._seen: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()

    def _files(self):
        suffixes = TEXT_SUFFIXES | HTML_SUFFIXES | PDF_SUFFIXES
        for path in sorted(self.folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in suffixes \
                    and path.stat().st_size <= MAX_FILE_BYTES:
                yield path

    def refresh(self) -> None:
        with self._lock:
            current = {}
            for path in self._files():
                st = path.stat()
                current[str(path)] = (st.st_size, st.st_mtime_ns)
            for key in set(self._seen) - set(current):
                self._db.execute("DELETE FROM docs WHERE path = ?", (key,))
            for key, stamp in current.items():
                if self._seen.get(key) == stamp:
                    continue
                self._db.execute("DELETE FROM docs WHERE path = ?", (key,))
                title, text = document_text(Path(key))
                self._db.execute("INSERT INTO docs VALUES (?, ?, ?)", (key, title, text))
            self._seen = current
            self._db.commit()

    def search(self, query: str, topn: int = 10) -> list[dict]:
        """The best `topn` documents: {url (file://), title, snippet}."""
        self.refresh()
        terms = [t for t in "".join(c if c.isalnum() else " " for c in query).split() if t]
        if not terms:
            return []
        match = " OR ".join(f'"{t}"' for t in terms)
        with self._lock:
            rows = self._db.execute(
                "SELECT path, title, snippet(docs, 2, '', '', ' … ', 24) FROM docs "
                "WHERE docs MATCH ? ORDER BY bm25(docs, 0.0, 5.0, 1.0) LIMIT ?",
                (match, topn)).fetchall()
        return [{"url": Path(p).as_uri(), "title": t, "snippet": " ".join(s.split())}
                for p, t, s in rows]
