"""The browser tool (ossrun.browser, ossrun.search_index) against a small HTTP server on loopback
serving pages written here, and a folder of local documents: search, open, scroll, find,
following link ids, citations, the refusal of private addresses (SSRF), and the tool loop driven
end to end through the chat with scripted model output.
"""

from __future__ import annotations

import socket

import pytest
from ossrun.browser import Browser, BrowserError, check_url
from ossrun.chat import ToolCall, ToolResult
from static_site import serve_folder
from test_chat import Script, tiny_chat_model

RIVERS = """<!doctype html><html><head><title>Rivers of Europe</title>
<style>.x{color:red}</style><script>var hidden = "never shown";</script></head><body>
<h1>Rivers</h1>
<p>The Danube flows through ten countries.</p>
<p>The Rhine starts in the Alps. See <a href="/lakes.html">the lakes page</a> for more.</p>
%s
<p>The Volga is the longest river of Europe.</p>
</body></html>"""
LAKES = """<!doctype html><html><head><title>Lakes</title></head><body>
<p>Lake Geneva is shared by France and Switzerland.</p></body></html>"""


def _pdf(text: str) -> bytes:
    """A one-page PDF showing `text` (written by hand: objects, then the cross-reference)."""
    stream = b"BT /F1 12 Tf 10 50 Td (" + text.encode() + b") Tj ET"
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 100] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A loopback HTTP server over a folder of pages; yields its base URL."""
    root = tmp_path_factory.mktemp("site")
    filler = "\n".join(f"<p>Filler paragraph number {i} about nothing.</p>" for i in range(60))
    (root / "rivers.html").write_text(RIVERS % filler)
    (root / "lakes.html").write_text(LAKES)
    with serve_folder(root) as url:
        yield url


@pytest.fixture
def docs(tmp_path, site):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "europe.md").write_text(f"# Notes on Europe\n\nRivers: the Danube and the Rhine.\n"
                                      f"Read [the rivers page]({site}/rivers.html).\n")
    (folder / "cooking.txt").write_text("Bread needs flour, water, salt and time.\n")
    (folder / "fjords.pdf").write_bytes(_pdf("Glaciers carve fjords slowly"))
    (folder / "page.html").write_text(f'<html><title>Local page</title><body><p>Rivers link: '
                                      f'<a href="{site}/rivers.html">rivers</a></p></body></html>')
    return folder


def test_search_open_scroll_find_follow_and_cite(docs, site):
    session = Browser(docs=str(docs), allow_private=True, view_tokens=120).open_session()
    results = session.search("rivers Danube")
    assert results.startswith("[0] Search results for `rivers Danube`")
    assert "【0†Notes on Europe†" in results and "cooking" not in results
    page = session.open(id=0)  # the markdown note, from the search results
    assert page.startswith("[1] Notes on Europe(file://") and "L0: # Notes on Europe" in page
    assert "【0†the rivers page】" in page  # a Markdown link is a reference too
    assert session.pages[1].links == {0: f"{site}/rivers.html"}
    session.search("Rivers link")
    page = session.open(id=0)  # the local HTML page: its link becomes reference 0
    assert "【0†rivers】" in page
    page = session.open(id=0)  # follow the link id to the loopback server
    assert page.startswith(f"[4] Rivers of Europe({site}/rivers.html)")
    assert "never shown" not in page and "color:red" not in page
    assert "The Danube flows through ten countries." in page
    assert "【0†the lakes page】" in page
    first_view = page.split("**viewing lines [")[1].split("]")[0]
    start, end = map(int, first_view.split(" - "))
    total = len(session.pages[4].lines) - 1
    assert start == 0 and 5 < end < total  # a view sized in tokens, not the whole page
    scrolled = session.open(loc=end + 1, num_lines=3)  # no id: scroll the current page
    assert f"**viewing lines [{end + 1} - {end + 3}] of {total}**" in scrolled
    assert scrolled.count("\nL") == 3
    found = session.find("Volga")
    assert found.startswith("[5] Find results for `Volga` in `Rivers of Europe`")
    assert "【0†match at L" in found and "longest river" in found
    volga = int(found.split("match at L")[1].split("】")[0])
    page = session.open(id=0, cursor=4)  # link 0 of page [4]: the lakes page
    assert page.startswith(f"[6] Lakes({site}/lakes.html)") and "Lake Geneva" in page

    answer = f"The Volga is longest 【4†L{volga}】; Geneva is shared 【6†L0-L0】; bogus 【9†L1】."
    content, citations = session.resolve_citations(answer)
    assert content == answer
    assert [(c.url, c.line_start, c.line_end) for c in citations] == [
        (f"{site}/rivers.html#L{volga}-L{volga}", volga, volga),
        (f"{site}/lakes.html#L0-L0", 0, 0)]
    assert "longest river" in citations[0].text and citations[1].title == "Lakes"
    pdf = session.search("glaciers")
    assert "fjords.pdf" in pdf
    assert "Glaciers carve fjords slowly" in session.open(id=0)
    session.close()


def test_errors_go_back_to_the_model(docs):
    session = Browser(docs=str(docs)).open_session()
    text, is_error = session.call("browser.open", '{"id": 3}')
    assert is_error and "no page is open yet" in text
    session.call("browser.search", '{"query": "bread"}')
    text, is_error = session.call("browser.open", '{"id": 7}')
    assert is_error and "has no link 7" in text
    assert session.call("browser.find", "{}")[0].startswith("Error: missing argument")
    text, is_error = session.call("browser.open", '{"id": "file:///etc/passwd"}')
    assert is_error and "not a document of the local index" in text
    text, is_error = session.call("browser.open", '{"id": "ftp://example.com/x"}')
    assert is_error and "only http and https" in text
    assert "No results." in session.search("zyxwvut")


def test_private_addresses_are_refused(docs, site, monkeypatch):
    session = Browser(docs=str(docs)).open_session()  # allow_private=False (the default)
    for url in (f"{site}/rivers.html", "http://localhost:9/", "http://[::1]/",
                "http://169.254.169.254/latest/meta-data/", "http://10.1.2.3/", "http://0.0.0.0/"):
        text, is_error = session.call("browser.open", f'{{"id": "{url}"}}')
        assert is_error and "refused" in text, (url, text)
    # A public-looking name that resolves to a private address is refused too.
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "",
                                          ("192.168.1.5", 80))])
    with pytest.raises(BrowserError, match="non-public address 192.168.1.5"):
        check_url("http://innocent.example/", allow_private=False)
    # Redirects are checked hop by hop: a loopback page redirecting is refused before fetching.
    session.search("rivers")
    session.pages[-1].links[0] = f"{site}/rivers.html"
    text, is_error = session.call("browser.open", '{"id": 0}')
    assert is_error and "refused" in text


def test_not_offered_without_a_backend(vocab_file, tiny_gguf):
    model = tiny_chat_model(vocab_file, tiny_gguf)
    with pytest.warns(RuntimeWarning, match="browser tool is not offered.*search backend"):
        chat = model.chat(tools=["browser"])
    assert chat.tools == []
    with pytest.raises(ValueError, match="not a folder"):
        Browser(docs="/nonexistent/folder")


def test_searx_backend(monkeypatch):
    calls = []

    class Response:
        def raise_for_status(self):
            pass

        def json(self):
            return {"results": [{"url": "https://example.org/a", "title": "A page",
                                 "content": "about a"}]}

    def fake_get(url, params, timeout):
        calls.append((url, params))
        return Response()

    import httpx

    monkeypatch.setattr(httpx, "get", fake_get)
    session = Browser(searx_url="http://127.0.0.1:8888/").open_session()
    text = session.search("query words", topn=3)
    assert calls == [("http://127.0.0.1:8888/search", {"q": "query words", "format": "json"})]
    assert "【0†A page†example.org】" in text and "about a" in text


def call(recipient: str, arguments: str) -> str:
    return f"<|channel|>analysis to={recipient} code<|message|>{arguments}<|call|>"


def test_tool_loop_end_to_end_with_scripted_output(vocab_file, tiny_gguf, docs, site):
    model = tiny_chat_model(vocab_file, tiny_gguf)
    answer = "<|channel|>final<|message|>The Danube crosses ten countries 【2†L2】.<|return|>"
    script = Script(model.tokenizer, call("browser.search", '{"query": "rivers link"}'),
                    call("browser.open", '{"id": 0}'), call("browser.open", '{"id": 0}'),
                    answer)
    chat = script.attach(model.chat(sampler=script, date="2025-06-28",
                                    tools=[Browser(docs=str(docs), allow_private=True)]))
    prompt = model.tokenizer.decode(chat.render())
    assert "## browser" in prompt and "namespace browser {" in prompt
    events = list(chat.stream("Which river crosses ten countries?"))
    calls = [e for e in events if isinstance(e, ToolCall)]
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [c.name for c in calls] == ["browser.search", "browser.open", "browser.open"]
    assert [r.is_error for r in results] == [False, False, False]
    assert results[2].content.startswith(f"[2] Rivers of Europe({site}/rivers.html)")
    reply = events[-1].reply
    assert reply.content == "The Danube crosses ten countries 【2†L2】."
    assert len(reply.citations) == 1 and reply.citations[0].url == f"{site}/rivers.html#L2-L2"
    assert "Danube" in reply.citations[0].text
    # The results went back to the model as harmony tool messages from browser.*.
    tool_messages = [m for m in reply.messages if m.role == "tool"]
    assert [m.name for m in tool_messages] == ["browser.search", "browser.open", "browser.open"]
    text = model.tokenizer.decode(script.prompts[3])
    assert "<|start|>browser.open to=assistant<|channel|>analysis<|message|>[2] Rivers" in text
    chat.close_tools()

