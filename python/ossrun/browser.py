"""The browser tool (harmony's `browser` namespace, HARMONY.md §8.1) as gpt-oss was trained to use
it: `search`, `open` and `find` display pages as numbered lines under a cursor (`[3]`), links as
numbered references `【id†text】` that `open` follows by id, views sized in tokens; the model's
citations `【cursor†Lstart-Lend】` become links in `reply.citations`.

Search backends (ossrun.search_index, SearXNG) are configured by the user; with none, the tool
is not offered. `open` of a URL fetches it with httpx (HTML to text by markdownify); URLs that
resolve to loopback, private or link-local addresses are refused unless allow_private=True.

    chat = model.chat(tools=[ossrun.Browser(docs="~/notes")])
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

from .harmony import ToolNamespace

LINE_WIDTH = 100
MAX_BYTES = 5 * 1024 * 1024
_CITATION = re.compile(r"【(\d+)†L(\d+)(?:-L(\d+))?】")


class BrowserError(Exception):
    """A failure the model is told about (bad URL, refused address, HTTP error)."""


@dataclass
class Citation:
    """A citation in the answer: the marker, the page it points to and the cited lines."""

    marker: str
    url: str
    title: str
    line_start: int
    line_end: int
    text: str


@dataclass
class Page:
    url: str
    title: str
    lines: list[str]
    links: dict[int, str] = field(default_factory=dict)  # reference id -> URL


@dataclass
class Browser:
    """Settings of the browser tool; each chat gets its own pages and cursors.

    docs: a folder of HTML, Markdown, text and PDF files to search (an SQLite FTS5 index).
    searx_url: a SearXNG instance (its JSON API) to search the web.
    allow_private: allow URLs that resolve to loopback, private or link-local addresses.
    view_tokens: the size of one view of a page, in tokens.
    """

    docs: str | None = None
    searx_url: str | None = None
    allow_private: bool = False
    view_tokens: int = 1024
    timeout_s: float = 15.0
    name: str = field(default="browser", init=False)

    def __post_init__(self):
        if self.docs is not None:
            folder = Path(self.docs).expanduser()
            if not folder.is_dir():
                raise ValueError(f"docs={self.docs!r} is not a folder")
            self.docs = str(folder.resolve())
        self._index = None

    def unavailable(self) -> str | None:
        if self.docs is None and self.searx_url is None:
            return ("no search backend is configured: ossrun.Browser(docs=FOLDER) for your own "
                    "documents or Browser(searx_url=URL) for a SearXNG instance "
                    "(CLI: --browser --docs DIR | --searx URL)")
        return None

    def namespace(self) -> ToolNamespace:
        return ToolNamespace.browser()

    def recipients(self) -> list[str]:
        return ["browser.search", "browser.open", "browser.find"]

    def index(self):
        if self._index is None and self.docs is not None:
            from .search_index import DocumentIndex

            self._index = DocumentIndex(self.docs)
        return self._index

    def open_session(self, tokenizer=None) -> BrowserSession:
        return BrowserSession(self, tokenizer)


class BrowserSession:
    """One chat's pages: a stack whose positions are the cursors the model sees."""

    def __init__(self, browser: Browser, tokenizer=None):
        self.browser = browser
        self.tokenizer = tokenizer
        self.pages: list[Page] = []
        self._client = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- the model's calls -------------------------------------------------------------------

    def call(self, recipient: str, text: str) -> tuple[str, bool]:
        name = recipient.removeprefix("browser.")
        try:
            args = json.loads(text) if text.strip() else {}
            if not isinstance(args, dict):
                raise BrowserError("the arguments must be a JSON object")
            if name == "search":
                return self.search(str(args["query"]), int(args.get("topn", 10))), False
            if name == "open":
                return self.open(args.get("id", -1), int(args.get("cursor", -1)),
                                 int(args.get("loc", -1)), int(args.get("num_lines", -1))), False
            if name == "find":
                return self.find(str(args["pattern"]), int(args.get("cursor", -1))), False
            raise BrowserError(f"unknown browser function {recipient!r} "
                               "(browser.search, browser.open, browser.find)")
        except KeyError as e:
            return f"Error: missing argument {e}", True
        except (ValueError, TypeError) as e:
            return f"Error: invalid arguments: {e}", True
        except BrowserError as e:
            return f"Error: {e}", True

    def search(self, query: str, topn: int = 10) -> str:
        b = self.browser
        topn = max(1, min(topn, 50))
        if b.index() is not None:
            results = b.index().search(query, topn)
        elif b.searx_url:
            results = self._searx(query, topn)
        else:
            raise BrowserError("no search backend is configured")
        lines, links = [], {}
        for i, r in enumerate(results):
            links[i] = r["url"]
            lines.append(f"# 【{i}†{r['title']}†{_domain(r['url'])}】")
            lines += _wrap(r.get("snippet") or "") + [""]
        if not results:
            lines = ["No results."]
        page = Page(f"search: {query}", f"Search results for `{query}`", lines, links)
        return self._show(self._push(page), 0, -1)

    def open(self, id=-1, cursor: int = -1, loc: int = -1, num_lines: int = -1) -> str:
        if isinstance(id, str) and id not in ("", "-1"):
            page = self._fetch(id)
            return self._show(self._push(page), max(loc, 0), num_lines)
        current = self._page(cursor)
        if isinstance(id, bool) or not isinstance(id, (int, float)):
            raise BrowserError(f"id must be a link number or a URL, got {id!r}")
        if int(id) >= 0:
            url = current.links.get(int(id))
            if url is None:
                known = ", ".join(map(str, sorted(current.links))) or "none"
                raise BrowserError(f"page [{self._cursor_of(current)}] has no link {int(id)} "
                                   f"(its links: {known})")
            return self._show(self._push(self._fetch(url)), max(loc, 0), num_lines)
        return self._show(self._cursor_of(current), max(loc, 0), num_lines)  # scroll

    def find(self, pattern: str, cursor: int = -1) -> str:
        page = self._page(cursor)
        needle = pattern.lower()
        lines, found = [], 0
        for n, line in enumerate(page.lines):
            if needle and needle in line.lower():
                lines.append(f"# 【{found}†match at L{n}】")
                lines += page.lines[n:n + 4] + [""]
                found += 1
        if not found:
            lines = [f"No `find` results for pattern: `{pattern}`"]
        links = {i: f"{page.url}#L{n}" for i, n in enumerate(
            n for n, line in enumerate(page.lines) if needle and needle in line.lower())}
        result = Page(f"find: {pattern} in {page.url}", f"Find results for `{pattern}` in "
                      f"`{page.title}`", lines, links)
        return self._show(self._push(result), 0, -1)

    # -- citations ---------------------------------------------------------------------------

    def resolve_citations(self, content: str) -> tuple[str, list[Citation]]:
        """The answer's citations of pages shown in this chat, as links with the cited text."""
        out = []
        for m in _CITATION.finditer(content):
            cursor, start = int(m.group(1)), int(m.group(2))
            end = int(m.group(3) or start)
            if not 0 <= cursor < len(self.pages):
                continue
            page = self.pages[cursor]
            if page.url.startswith(("search: ", "find: ")):
                continue
            end = min(end, len(page.lines) - 1)
            text = " ".join(line.strip() for line in page.lines[start:end + 1])
            out.append(Citation(m.group(0), f"{page.url}#L{start}-L{end}" if "#" not in page.url
                                else page.url, page.title, start, end, text))
        return content, out

    # -- pages -------------------------------------------------------------------------------

    def _push(self, page: Page) -> int:
        self.pages.append(page)
        return len(self.pages) - 1

    def _page(self, cursor: int) -> Page:
        if not self.pages:
            raise BrowserError("no page is open yet: search or open a URL first")
        if cursor < 0:
            return self.pages[-1]
        if cursor >= len(self.pages):
            raise BrowserError(f"no page has cursor {cursor} (open: 0..{len(self.pages) - 1})")
        return self.pages[cursor]

    def _cursor_of(self, page: Page) -> int:
        return max(i for i, p in enumerate(self.pages) if p is page)

    def _show(self, cursor: int, loc: int, num_lines: int) -> str:
        """The view of a page from line `loc`: `num_lines` lines, or as many as fit in the
        view's token budget."""
        page = self.pages[cursor]
        total = len(page.lines)
        loc = min(loc, max(total - 1, 0))
        budget, end, used = self.browser.view_tokens, loc, 0
        while end < total and (num_lines <= 0 or end - loc < num_lines):
            cost = self._tokens(f"L{end}: {page.lines[end]}\n")
            if num_lines <= 0 and used + cost > budget and end > loc:
                break
            used += cost
            end += 1
        body = "\n".join(f"L{n}: {page.lines[n]}" for n in range(loc, end))
        return (f"[{cursor}] {page.title}({page.url})\n"
                f"**viewing lines [{loc} - {max(end - 1, loc)}] of {max(total - 1, 0)}**\n\n{body}")

    def _tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text)) if self.tokenizer else max(1, len(text) // 4)

    # -- fetching ----------------------------------------------------------------------------

    def _fetch(self, url: str) -> Page:
        if url.startswith("file://"):
            return self._local(url)
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.browser.timeout_s, follow_redirects=False,
                                        headers={"User-Agent": "ossrun-browser"})
        for _ in range(6):  # each redirect is checked like the first URL
            check_url(url, self.browser.allow_private)
            try:
                with self._client.stream("GET", url) as r:
                    if r.is_redirect and "location" in r.headers:
                        url = urljoin(url, r.headers["location"])
                        continue
                    if r.status_code >= 400:
                        raise BrowserError(f"{url}: HTTP {r.status_code}")
                    data = b""
                    for chunk in r.iter_bytes():
                        data += chunk
                        if len(data) > MAX_BYTES:
                            break
                    kind = r.headers.get("content-type", "")
                    encoding = r.encoding or "utf-8"
            except httpx.HTTPError as e:
                raise BrowserError(f"{url}: {e}") from None
            return page_from_bytes(url, data, kind, encoding)
        raise BrowserError(f"{url}: too many redirects")

    def _local(self, url: str) -> Page:
        docs = self.browser.docs
        path = Path(urlparse(url).path).resolve()
        if docs is None or not path.is_relative_to(docs) or not path.is_file():
            raise BrowserError(f"{url}: not a document of the local index")
        from .search_index import HTML_SUFFIXES, document_text

        if path.suffix.lower() in HTML_SUFFIXES:
            return html_page(url, path.read_text(encoding="utf-8", errors="replace"))
        title, text = document_text(path)
        return markdown_page(url, title, text)

    def _searx(self, query: str, topn: int) -> list[dict]:
        import httpx

        base = self.browser.searx_url.rstrip("/")
        try:  # the user's own configured instance: private addresses allowed
            r = httpx.get(f"{base}/search", params={"q": query, "format": "json"},
                          timeout=self.browser.timeout_s)
            r.raise_for_status()
            results = r.json().get("results", [])
        except (httpx.HTTPError, ValueError) as e:
            raise BrowserError(f"the SearXNG search failed: {e}") from None
        return [{"url": x.get("url", ""), "title": x.get("title") or x.get("url", ""),
                 "snippet": x.get("content", "")} for x in results[:topn] if x.get("url")]


def check_url(url: str, allow_private: bool) -> None:
    """BrowserError unless `url` is http(s) and (unless allowed) every address its host
    resolves to is public."""
    parts = urlparse(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BrowserError(f"{url}: only http and https URLs can be opened")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except socket.gaierror as e:
        raise BrowserError(f"{url}: cannot resolve {parts.hostname} ({e})") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise BrowserError(f"{url}: refused, {parts.hostname} resolves to the non-public "
                               f"address {address} (Browser(allow_private=True) allows it)")


def page_from_bytes(url: str, data: bytes, content_type: str, encoding: str = "utf-8") -> Page:
    """A page from fetched bytes: HTML through markdownify, PDF through pypdf, else text."""
    if "pdf" in content_type or data[:5] == b"%PDF-":
        from .search_index import pdf_text

        return _page(url, _domain(url), pdf_text(data))
    text = data.decode(encoding, errors="replace")
    if "html" in content_type or text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        return html_page(url, text)
    return markdown_page(url, _domain(url), text)


def html_page(url: str, html: str) -> Page:
    """HTML as Markdown-like text whose links are numbered references `【id†text】`."""
    from bs4 import BeautifulSoup
    from markdownify import MarkdownConverter

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg"]):
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else _domain(url)
    if soup.title:
        soup.title.decompose()
    links: dict[int, str] = {}
    for a in soup.find_all("a", href=True):
        target = urljoin(url, a["href"])
        label = a.get_text(" ", strip=True)
        if not label or urlparse(target).scheme not in ("http", "https", "file"):
            a.unwrap()
            continue
        n = len(links)
        links[n] = target
        a.replace_with(f"【{n}†{label}】")
    text = MarkdownConverter(heading_style="ATX", strip=["img"]).convert_soup(soup)
    page = _page(url, title, text)
    page.links = links
    return page


_MARKDOWN_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:https?|file)://[^)\s]+)\)")


def markdown_page(url: str, title: str, text: str) -> Page:
    """Text whose Markdown links `[text](url)` become numbered references `【id†text】`."""
    links: dict[int, str] = {}

    def reference(m: re.Match) -> str:
        links[len(links)] = m.group(2)
        return f"【{len(links) - 1}†{m.group(1)}】"

    page = _page(url, title, _MARKDOWN_LINK.sub(reference, text))
    page.links = links
    return page


def _page(url: str, title: str, text: str) -> Page:
    return Page(url, title or _domain(url), _wrap(text))


def _wrap(text: str) -> list[str]:
    """Lines of at most LINE_WIDTH characters; runs of blank lines become one."""
    out: list[str] = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            if out and out[-1]:
                out.append("")
            continue
        out += textwrap.wrap(line, LINE_WIDTH, break_long_words=False, break_on_hyphens=False,
                             replace_whitespace=False) or [""]
    while out and not out[-1]:
        out.pop()
    return out


def _domain(url: str) -> str:
    return urlparse(url).hostname or url
