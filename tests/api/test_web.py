"""The review web page (agentfs/web) through httpx's ASGI transport, under trio.

A workspace is prepared through the Python API as an agent would leave it (a
report in review, a checkpoint, a later edit); the tests then act as a
reviewer over HTTP and check the result through the API and the journal: the
page must change exactly what the core records, as the reviewer.
"""

from __future__ import annotations

import base64
import re
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import agentfs
from agentfs.api import WorkspaceClient
from agentfs.errors import InvalidArgument
from agentfs.journal import Journal
from agentfs.store import open_store
from agentfs.web import ReviewService, WebSettings, create_app
from agentfs.web.security import load_users
from agentfs.web.settings import parse_listen
from tests.helpers.web import NEW, OLD, prepare

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    url = f"file://{tmp_path}/store"
    prepare(url)
    return url


def make_app(url: str, users: dict[str, str] | None = None, **kw: object) -> tuple[object, ReviewService]:
    store = open_store(url)
    service = ReviewService(store, agent="alice")
    return create_app(service, WebSettings(store_url=url, **kw), users), service  # type: ignore[arg-type]


@pytest.fixture
def web(store_url: str) -> Iterator[object]:
    app, service = make_app(store_url)
    yield app
    service.close()
    service.store.close()


def client(app: object, **kw: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1",  # type: ignore[arg-type]
                             **kw)  # type: ignore[arg-type]


class Tags(HTMLParser):
    """Every element and its attributes, as a browser would parse them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.seen.append((tag, attrs))


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "page has no CSRF field"
    return m.group(1)


async def api(url: str, fn: Callable[[WorkspaceClient], Any]) -> Any:
    """``fn(client)`` on a fresh API client, in a worker thread (the API blocks)."""
    def go() -> Any:
        with agentfs.open_workspace(url, "ws", create=False) as c:
            return fn(c)
    return await trio.to_thread.run_sync(go)


def journal_states(url: str, path: str) -> list[tuple[str, str]]:
    """(agent, new value) of every status record of ``path`` in the journal."""
    from agentfs.agentstate import read_records

    out = []
    for c in read_records(Journal(open_store(url), "ws")):
        for r in getattr(c, "records", []):
            if r.action == "state" and getattr(r.op, "path", None) == path and r.detail.get("name") == "status":
                out.append((r.agent, str(r.detail.get("new"))))
    return out


async def test_browse_workspaces_files_and_headers(web: object) -> None:
    async with client(web) as h:
        r = await h.get("/")
        assert r.status_code == 200 and 'href="/w/ws"' in r.text and '/w/ws/files/' in r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "default-src 'none'" in csp and "unsafe" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        r = await h.get("/w/ws")  # the dashboard
        assert r.status_code == 200 and 'data-live="/w/ws/events"' in r.text
        statuses = r.text[r.text.index('id="statuses"'):r.text.index('id="agents"')]
        assert re.search(r'status-review">review</span></a></td><td class="num">1</td>', statuses)
        agents = r.text[r.text.index('id="agents"'):r.text.index('id="recent"')]
        assert "<td>writer</td>" in agents
        recent = r.text[r.text.index('id="recent"'):]
        for f in ("report.md", "notes/evil.md", "data.bin"):
            assert f'href="/w/ws/files/{f}"' in recent
        assert recent.count('href="/w/ws/files/report.md"') == 1  # its newest change only
        r = await h.get("/w/ws/files/")
        assert r.status_code == 200
        assert re.search(r'href="/w/ws/files/notes">notes/</a>', r.text)
        row = r.text[r.text.index('href="/w/ws/files/report.md"'):]
        row = row[: row.index("</tr>")]
        assert 'status-review">review<' in row and "writer" in row and f"{len(NEW)} B" in row
        r = await h.get("/w/ws/files/notes")
        assert 'href="/w/ws/files/notes/evil.md"' in r.text


async def test_markdown_preview_renders_and_is_inert(web: object) -> None:
    async with client(web) as h:
        r = await h.get("/w/ws/files/report.md")
        assert r.status_code == 200
        assert "<h1>Q4 report</h1>" in r.text and "Revenue grew 40%." in r.text
        r = await h.get("/w/ws/files/notes/evil.md")
        assert r.status_code == 200
        article = r.text[r.text.index('<article class="markdown"'):r.text.index("</article>")]
        assert "<h1>Hello</h1>" in article
        tags = Tags()
        tags.feed(r.text)
        # the page's only script is its own file; nothing of the agent's runs
        assert [a for t, a in tags.seen if t == "script"] == [[("src", "/static/live.js"), ("defer", None)]]
        for tag, attrs in tags.seen:
            for name, value in attrs:
                assert not name.lower().startswith("on"), (tag, name)
                assert "javascript:" not in (value or "").lower(), (tag, name, value)
        assert {"h1", "article"} <= {t for t, _ in tags.seen}
        assert "&lt;script&gt;" in article  # shown as text, not dropped silently


async def test_review_queue_approve_records_the_reviewer(web: object, store_url: str) -> None:
    async with client(web) as h:
        r = await h.get("/w/ws/review")
        assert 'href="/w/ws/files/report.md"' in r.text
        assert 'href="/w/ws/files/data.bin"' not in r.text
        r = await h.get("/w/ws/review", params={"status": "review", "owner": "nobody"})
        assert 'href="/w/ws/files/report.md"' not in r.text
        page = await h.get("/w/ws/files/report.md")
        token = csrf_of(page.text)
        # no token, a wrong token, another site: refused, nothing recorded
        for data, headers in (({"decision": "approve"}, {}),
                              ({"decision": "approve", "csrf": "0" * 64}, {}),
                              ({"decision": "approve", "csrf": token}, {"origin": "http://evil.example"})):
            r = await h.post("/w/ws/review/report.md", data=data, headers=headers)
            assert r.status_code == 403, r.text
        assert journal_states(store_url, "report.md") == [("writer", "review")]
        r = await h.post("/w/ws/review/report.md", data={"decision": "approve", "csrf": token, "note": "ship it"})
        assert r.status_code == 303 and r.headers["location"].startswith("/w/ws/files/report.md")
        r = await h.get(r.headers["location"])
        assert 'status-approved">approved<' in r.text and "ship it" in r.text
        # the history of the file shows the reviewer's transition
        assert re.search(r"<td>alice</td>\s*<td>state</td>\s*<td>report.md</td>\s*<td>status: review -&gt; approved",
                         r.text), r.text
        # approved -> in_progress is not in the lifecycle: refused with its reason, nothing changed
        r = await h.post("/w/ws/review/report.md", data={"decision": "changes", "csrf": token})
        assert r.status_code == 409 and 'id="reason"' in r.text and "Traceback" not in r.text
    assert journal_states(store_url, "report.md") == [("writer", "review"), ("alice", "approved")]
    st = await api(store_url, lambda c: c.state("report.md"))
    assert st is not None and st.status == "approved" and st.note == "ship it"


async def test_diff_and_roll_back_and_undo(web: object, store_url: str) -> None:
    async with client(web) as h:
        r = await h.get("/w/ws/checkpoints")
        assert "v1" in r.text and "first draft" in r.text
        r = await h.get("/w/ws/diff", params={"a": "v1", "b": "head"})
        assert r.status_code == 200
        assert '<span class="del">-Revenue grew 4%.</span>' in r.text
        assert '<span class="add">+Revenue grew 40%.</span>' in r.text
        r = await h.get("/w/ws/diff", params={"a": "v1", "path": "report.md"})
        assert '<span class="add">+Revenue grew 40%.</span>' in r.text
        r = await h.get("/w/ws/restore/v1")
        assert r.status_code == 200 and "Roll back" in r.text and "report.md" in r.text
        assert await api(store_url, lambda c: c.read_bytes("report.md")) == NEW  # a GET changes nothing
        r = await h.post("/w/ws/restore/v1", data={"csrf": csrf_of(r.text)})
        assert r.status_code == 303
        undo = re.search(r"undo=([^&]+)", r.headers["location"])
        assert undo
        assert await api(store_url, lambda c: c.read_bytes("report.md")) == OLD
        assert undo.group(1) in await api(store_url, lambda c: [cp.name for cp in c.checkpoints()])
        page = await h.get(r.headers["location"])
        assert "Rolled back to v1" in page.text
        r = await h.post(f"/w/ws/restore/{undo.group(1)}", data={"csrf": csrf_of(page.text)})
        assert r.status_code == 303
    assert await api(store_url, lambda c: c.read_bytes("report.md")) == NEW


async def test_create_checkpoint_and_download(web: object, store_url: str) -> None:
    async with client(web) as h:
        page = await h.get("/w/ws/checkpoints")
        r = await h.post("/w/ws/checkpoints", data={"csrf": csrf_of(page.text), "name": "by-review", "note": "n"})
        assert r.status_code == 303
        r = await h.get("/w/ws/raw/data.bin")
        assert r.status_code == 200 and r.content == bytes(range(256)) * 4
        assert r.headers["content-disposition"].startswith("attachment")
        assert r.headers["content-type"] == "application/octet-stream"
        r = await h.get("/w/ws/raw/report.md", params={"at": "v1"})
        assert r.content == OLD
        r = await h.get("/w/ws/files/data.bin")
        assert "No preview for this file" in r.text
    cps = {cp.name: cp for cp in await api(store_url, lambda c: c.checkpoints())}
    assert cps["by-review"].by == "alice"


BAD_GETS = [
    ("/w/ws/files/notes/%2e%2e/report.md", 400),
    ("/w/ws/files/notes//evil.md", 400),
    ("/w/.agentfs/files/", 400),
    ("/w/nope/files/", 404),
    ("/w/ws/files/missing.md", 404),
    ("/w/ws/raw/notes", 400),
    ("/w/ws/diff?a=nope", 404),
    ("/w/ws/diff", 400),
    ("/w/ws/log?limit=abc", 400),
    ("/w/ws/log?limit=0", 400),
    ("/w/ws/files/?offset=-1", 400),
    ("/w/ws/files/?offset=99", 400),
    ("/w/ws/log?window=x", 400),
    ("/w/ws/restore/nope", 404),
    ("/w/ws/raw/report.md?at=nope", 404),
    ("/no/such/page", 404),
]


async def test_bad_input_gets_a_4xx_page(web: object) -> None:
    async with client(web) as h:
        for url, status in BAD_GETS:
            r = await h.get(url)
            assert r.status_code == status, (url, r.status_code, r.text[-300:])
            assert "Traceback" not in r.text and r.headers["content-security-policy"], url
            if status != 404 or url.startswith("/w/"):
                assert 'id="reason"' in r.text, url
        token = csrf_of((await h.get("/w/ws/files/report.md")).text)
        r = await h.post("/w/ws/review/report.md", content=b"decision=approve&csrf=" + token.encode() +
                         b"&note=" + b"x" * 70_000, headers={"content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 413
        r = await h.post("/w/ws/review/report.md", json={"decision": "approve"})
        assert r.status_code == 415
        r = await h.post("/w/ws/review/report.md", data={"decision": "burn", "csrf": token})
        assert r.status_code == 400 and "approve or changes" in r.text
        r = await h.post("/w/ws/review/missing.md", data={"decision": "approve", "csrf": token})
        assert r.status_code == 404
        r = await h.post("/w/ws/checkpoints", data={"csrf": token, "name": "bad/name"})
        assert r.status_code == 400
        r = await h.get("/", headers={"host": "evil.example"})  # DNS rebinding: refused
        assert r.status_code == 400
        assert (await h.get("/")).status_code == 200  # still serving


async def test_read_only_server_refuses_changes(store_url: str) -> None:
    app, service = make_app(store_url, read_only=True)
    try:
        async with client(app) as h:
            page = await h.get("/w/ws/files/report.md")
            assert 'id="approve"' not in page.text
            r = await h.post("/w/ws/restore/v1", data={"csrf": "0" * 64})
            assert r.status_code == 403 and "read-only" in r.text
    finally:
        service.close()
        service.store.close()
    assert await api(store_url, lambda c: c.read_bytes("report.md")) == NEW


async def test_login_names_the_reviewer(store_url: str, tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    users_file.write_text("# reviewers\nbob:bob-secret-token\n")
    users_file.chmod(0o600)
    app, service = make_app(store_url, users=load_users(str(users_file)), host="0.0.0.0",
                            auth_file=str(users_file))
    good = "Basic " + base64.b64encode(b"bob:bob-secret-token").decode()
    bad = "Basic " + base64.b64encode(b"bob:wrong-token-here").decode()
    try:
        async with client(app) as h:
            r = await h.get("/")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
            assert (await h.get("/", headers={"authorization": bad})).status_code == 401
            assert (await h.get("/", headers={"authorization": "Basic !!"})).status_code == 401
            h.headers["authorization"] = good
            page = await h.get("/w/ws/files/report.md")
            assert page.status_code == 200 and ">bob<" in page.text
            r = await h.post("/w/ws/review/report.md", data={"decision": "approve", "csrf": csrf_of(page.text)})
            assert r.status_code == 303
    finally:
        service.close()
        service.store.close()
    assert journal_states(store_url, "report.md")[-1] == ("bob", "approved")


def test_settings_refuse_exposure_and_bad_users(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="needs --auth-file"):
        WebSettings(store_url="memory://x", host="0.0.0.0").check_exposure()
    WebSettings(store_url="memory://x", host="127.0.0.1").check_exposure()
    assert parse_listen("127.0.0.1:8330") == ("127.0.0.1", 8330)
    assert parse_listen(":9000") == ("127.0.0.1", 9000)
    assert parse_listen("[::1]:80") == ("::1", 80)
    for bad in ("host:port", "1.2.3.4:99999", "[::1]80", "a b:1"):
        with pytest.raises(InvalidArgument):
            parse_listen(bad)
    f = tmp_path / "users"
    for text in ("", "bob:short\n", "no-colon-here-at-all\n", "bad name:long-enough-token\n"):
        f.write_text(text)
        with pytest.raises(InvalidArgument):
            load_users(str(f))
    with pytest.raises(InvalidArgument):
        load_users(str(tmp_path / "missing"))


def test_cli_refuses_to_listen_beyond_loopback_without_login(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from agentfs.cli import main

    for argv, code, message in (
            (["--listen", "0.0.0.0:0"], 64, "agentfs: listening on 0.0.0.0 needs --auth-file"),
            (["--listen", "127.0.0.1:http"], 64, "agentfs: bad --listen port"),
            (["--auth-file", str(tmp_path / "none"), "--listen", "0.0.0.0:0"], 64,
             "agentfs: cannot read the users file"),
            (["-w", "nope", "--listen", "127.0.0.1:0"], 2, "agentfs: no such workspace: nope")):
        monkeypatch.setattr(sys, "argv", ["agentfs", "serve", f"file://{tmp_path}", *argv])
        with pytest.raises(SystemExit) as e:
            main()
        err = capsys.readouterr().err
        assert e.value.code == code, (argv, err)
        assert err.startswith(message) and "Traceback" not in err, (argv, err)


async def test_review_and_roll_back_on_s3(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    await trio.to_thread.run_sync(lambda: prepare(s3_url, small=True))
    app, service = make_app(s3_url)
    try:
        async with client(app) as h:
            r = await h.get("/w/ws/review")
            assert 'href="/w/ws/files/report.md"' in r.text
            page = await h.get("/w/ws/files/report.md")
            r = await h.post("/w/ws/review/report.md", data={"decision": "approve", "csrf": csrf_of(page.text)})
            assert r.status_code == 303
            r = await h.post("/w/ws/restore/v1", data={"csrf": csrf_of(page.text)})
            assert r.status_code == 303
    finally:
        service.close()
        service.store.close()
    data, st = await api(s3_url, lambda c: (c.read_bytes("report.md"), c.state("report.md")))
    assert data == OLD
    assert st is not None and st.status == "review"  # the roll back restored the state of v1 too
    assert ("alice", "approved") in journal_states(s3_url, "report.md")


async def test_locks_page_shows_the_holder(web: object, store_url: str) -> None:
    c = await trio.to_thread.run_sync(lambda: agentfs.open_workspace(store_url, "ws", agent="locker", create=False))
    held = c.lock("report.md")
    try:
        await trio.to_thread.run_sync(held.__enter__)
        async with client(web) as h:
            r = await h.get("/w/ws/locks")
            assert re.search(r'report.md</a></td><td>exclusive</td><td>locker</td>', r.text), r.text
            r = await h.get("/w/ws/files/report.md")
            assert "Locked (exclusive) by locker@" in r.text
            await trio.to_thread.run_sync(held.__exit__, None, None, None)
            r = await h.get("/w/ws/locks")
            assert "no lock is held" in r.text
            assert "Locked (" not in (await h.get("/w/ws/files/report.md")).text
    finally:
        await trio.to_thread.run_sync(c.close)


async def test_listing_is_paged(web: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import agentfs.web.app

    monkeypatch.setattr(agentfs.web.app, "PAGE_ROWS", 2)
    async with client(web) as h:
        r = await h.get("/w/ws/files/")
        assert "Entries 1 to 2 of 3" in r.text and 'href="?offset=2"' in r.text
        assert "notes/</a>" in r.text and "data.bin</a>" in r.text and "report.md</a>" not in r.text
        r = await h.get("/w/ws/files/?offset=2")
        assert "report.md</a>" in r.text and "data.bin</a>" not in r.text and 'href="?offset=0"' in r.text


async def test_history_window_and_new_commits(web: object, store_url: str) -> None:
    async with client(web) as h:
        r = await h.get("/w/ws/log", params={"window": "1"})  # the newest commit only: the last write
        assert r.text.count("<tr class=\"action-") == 1 and "action-write" in r.text
        r = await h.get("/w/ws/log", params={"window": "0"})  # then all of it (older commits read now)
        assert "action-create" in r.text and "checkpoint v1" in r.text
        await api(store_url, lambda c: c.write_bytes("later.txt", b"new"))
        r = await h.get("/w/ws/log", params={"window": "0"})
        assert "<td>later.txt</td>" in r.text and "action-create" in r.text
        r = await h.get("/w/ws/log", params={"path": "notes"})
        assert "<td>notes/evil.md</td>" in r.text and "report.md" not in r.text


def test_previews_of_tables_code_and_cut_text() -> None:
    from agentfs.web.render import TABLE_ROWS, preview

    p = preview("t.csv", b"a,b\n1,\"x,<y>\"\n2,z\n", 18)
    assert p.kind == "table" and p.rows == [["a", "b"], ["1", "x,<y>"], ["2", "z"]] and not p.truncated
    p = preview("t.tsv", b"h1\th2\nv1\tv2\npartial", 10_000)  # cut by the preview: the last line dropped
    assert p.rows == [["h1", "h2"], ["v1", "v2"]] and p.truncated
    jl = b'{"k": 1, "s": "a"}\n{"s": "b", "x": [1]}\nnot json\n'
    p = preview("e.jsonl", jl, len(jl))
    assert p.rows[0] == ["k", "s"] and p.rows[1] == ["1", "a"] and p.rows[2] == ["", "b"]
    assert p.rows[3] == ["", ""]
    big = b"n\n" + b"1\n" * (TABLE_ROWS + 50)
    p = preview("big.csv", big, len(big))
    assert p.truncated and len(p.rows) <= TABLE_ROWS + 2
    p = preview("x.py", b"def f():\n    return '<b>'\n", 28)
    assert p.kind == "code" and 'class="hl"' in p.html and "&lt;b&gt;" in p.html and "<b>" not in p.html
    p = preview("notes.txt", "é".encode() * 10, 100)  # a cut in the middle of a character
    assert p.kind == "text" and p.truncated
    assert preview("x.bin", b"\x00\x01\x02", 3).kind == "binary"
    assert preview("pic.png", b"\x89PNG", 4).kind == "image"


async def test_csv_and_code_pages(web: object, store_url: str) -> None:
    await api(store_url, lambda c: c.write_bytes("t.csv", b"day,score\n2026-12-01,<b>7</b>\n"))
    async with client(web) as h:
        r = await h.get("/w/ws/files/t.csv")
        assert "<th>day</th><th>score</th>" in r.text and "<td>&lt;b&gt;7&lt;/b&gt;</td>" in r.text
        assert (await h.get("/static/code.css")).status_code == 200


async def test_browse_a_checkpoint_read_only(web: object) -> None:
    async with client(web) as h:
        r = await h.get("/w/ws/checkpoints")
        assert 'href="/w/ws/files/?at=v1"' in r.text
        r = await h.get("/w/ws/files/", params={"at": "v1"})
        assert "at checkpoint v1 (read-only)" in r.text
        assert 'href="/w/ws/files/report.md?at=v1"' in r.text and 'href="/w/ws/files/notes?at=v1"' in r.text
        r = await h.get("/w/ws/files/report.md", params={"at": "v1"})
        assert "Revenue grew 4%." in r.text and "40%" not in r.text
        assert 'id="approve"' not in r.text and 'href="/w/ws/raw/report.md?at=v1"' in r.text
        assert (await h.get("/w/ws/files/report.md", params={"at": "nope"})).status_code == 404
        assert (await h.get("/w/ws/files/later.txt", params={"at": "v1"})).status_code == 404
        assert (await h.get("/w/ws/files/", params={"at": "bad/name"})).status_code in (400, 404)


def test_cli_names_serve_and_web() -> None:
    from agentfs.cli import app
    from agentfs.cli.web import serve_cmd

    cmds = {c.name: c.callback for c in app.registered_commands}
    assert cmds["serve"] is serve_cmd and cmds["web"] is serve_cmd


async def test_live_events_follow_the_journal_tail(web: object, store_url: str) -> None:
    from agentfs.web.app import _touches

    async with client(web) as h:
        page = await h.get("/w/ws/files/report.md")
        assert 'data-live="/w/ws/events?path=report.md"' in page.text and "/static/live.js" in page.text
        assert (await h.get("/static/live.js")).status_code == 200
        assert 'data-live="/w/ws/events"' in (await h.get("/w/ws/review")).text
        assert "data-live" not in (await h.get("/w/ws/files/", params={"at": "v1"})).text
    assert _touches("report.md", "report.md") and _touches("notes/evil.md", "notes")
    assert _touches("notes", "notes/evil.md") and _touches("x", "") and _touches("", "report.md")
    assert not _touches("report.md.bak", "report.md") and not _touches("data.bin", "notes")


def test_changes_reads_the_tail(store_url: str) -> None:
    service = ReviewService(open_store(store_url), agent="alice")
    try:
        seq = service.tree("ws").seq
        assert service.changes("ws", seq) == (seq, [])
        with agentfs.open_workspace(store_url, "ws", agent="writer", create=False) as c:
            c.write_bytes("notes/new.md", b"x")
            c.rename("notes/new.md", "notes/newer.md")
        new, paths = service.changes("ws", seq)
        assert new > seq and "notes/new.md" in paths and "notes/newer.md" in paths
        assert service.changes("ws", new) == (new, [])
    finally:
        service.close()
        service.store.close()


async def test_diff_skips_large_and_binary_files(web: object, store_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import agentfs.web.service

    await api(store_url, lambda c: c.write_bytes("data.bin", bytes(range(200, 256))))
    async with client(web) as h:
        r = await h.get("/w/ws/diff", params={"a": "v1", "path": "data.bin"})
        assert "binary" in r.text
        monkeypatch.setattr(agentfs.web.service, "PREVIEW_BYTES", 10)
        r = await h.get("/w/ws/diff", params={"a": "v1"})
        assert "too large for a line diff" in r.text and '<span class="add">' not in r.text
        r = await h.get("/w/ws/diff", params={"a": "v1", "path": "nothing.txt"})
        assert r.status_code == 404


def make_conflict(url: str) -> str:
    """Two writers race on report.md; returns the loser's conflict copy."""
    from agentfs.errors import ConflictError

    with agentfs.open_workspace(url, "ws", agent="slow", create=False) as c1, \
            agentfs.open_workspace(url, "ws", agent="fast", create=False) as c2:
        f = c1.open("report.md", "wb")
        f.write(b"# Q4 report\n\nRevenue grew 3%.\n")
        c2.write_bytes("report.md", NEW + b"fast\n")
        with pytest.raises(ConflictError) as e:
            f.close()
        return e.value.copy


async def test_conflict_copies_beside_their_file(web: object, store_url: str) -> None:
    copy = await trio.to_thread.run_sync(make_conflict, store_url)
    async with client(web) as h:
        r = await h.get("/w/ws/files/report.md")
        assert 'id="conflicts"' in r.text and f'href="/w/ws/files/{copy}"' in r.text
        r = await h.get("/w/ws/diff", params={"path": "report.md", "other": copy})
        assert r.status_code == 200
        assert '<span class="add">+Revenue grew 3%.</span>' in r.text and '<span class="del">-fast</span>' in r.text
        r = await h.get("/w/ws/log")
        assert "action-conflict" in r.text
        r = await h.get("/w/ws/diff", params={"path": "report.md", "other": "nope.md"})
        assert r.status_code == 404
        assert 'id="conflicts"' not in (await h.get("/w/ws/files/notes/evil.md")).text


async def test_resolve_conflict_copies(web: object, store_url: str) -> None:
    copy = await trio.to_thread.run_sync(make_conflict, store_url)
    async with client(web) as h:
        token = csrf_of((await h.get("/w/ws/files/report.md")).text)
        for data, status in (({"copy": "data.bin", "keep": "file"}, 400),  # not a conflict copy
                             ({"copy": copy, "keep": "burn"}, 400),
                             ({"copy": copy, "keep": "both", "name": "a/b"}, 400),
                             ({"copy": copy, "keep": "both", "name": "data.bin"}, 409)):
            r = await h.post("/w/ws/resolve/report.md", data={**data, "csrf": token})
            assert r.status_code == status, (data, r.text[-300:])
        r = await h.post("/w/ws/resolve/report.md", data={"copy": copy, "keep": "copy", "csrf": token})
        assert r.status_code == 303
    data, gone = await api(store_url, lambda c: (c.read_bytes("report.md"), not c.exists(copy)))
    assert data == b"# Q4 report\n\nRevenue grew 3%.\n" and gone
    copy = await trio.to_thread.run_sync(make_conflict, store_url)
    async with client(web) as h:
        token = csrf_of((await h.get("/w/ws/files/report.md")).text)
        r = await h.post("/w/ws/resolve/report.md", data={"copy": copy, "keep": "both", "name": "report-b.md",
                                                          "csrf": token})
        assert r.status_code == 303 and r.headers["location"].startswith("/w/ws/files/report-b.md")
        assert 'id="conflicts"' not in (await h.get("/w/ws/files/report.md")).text
        log = (await h.get("/w/ws/log")).text
        assert re.search(r"<td>alice</td>\s*<td>rename</td>\s*<td>" + re.escape(copy) + " -&gt; report-b.md", log)
    both = await api(store_url, lambda c: (c.read_bytes("report-b.md"), c.exists(copy)))
    assert both == (b"# Q4 report\n\nRevenue grew 3%.\n", False)
