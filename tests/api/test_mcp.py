"""``agentfs mcp``: real MCP sessions against the server.

Two sessions spawn ``agentfs mcp`` and talk to it over stdio with the SDK's
client: every tool family (files, optimistic versions, locks against the
Python API, state, checkpoints, the audit log; locks given back when the
session ends), and a server stopped by SIGTERM giving its locks back.  The
others use the SDK's in-process client on the same server object: bad input,
bounded reads, read-only mode, attribution, a racing writer, the reference
server's tools, and a session beside a real mount (locks against
``agentfs lock`` and ``agentfs.lock()`` there).  Every store checks clean.
"""

from __future__ import annotations

import base64
import os
import signal
import sys
from pathlib import Path

import anyio
import pytest
from mcp import Client

import agentfs
from agentfs.errors import WouldBlock
from agentfs.locks import LeaseStore
from agentfs.mcp_server import McpApp, McpSettings
from tests.helpers.mcp import app_bytes, assert_clean, err, inproc, ok, run, stdio_session

# -- one real stdio session: every tool family ------------------------------------------------


def test_stdio_session(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTFS_AGENT", raising=False)
    url = f"file://{tmp_path}/store"
    human = agentfs.open_workspace(url, "research", agent="human")
    human.write_bytes("report.md", b"# report\ndraft\n")
    human.write_bytes("other.md", b"other\n")

    async def main() -> None:
        async with stdio_session(url, "research", "--agent", "bot") as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert {"read_text_file", "write_file", "edit_file", "list_directory", "lock_acquire",
                    "lock_release", "locks_list", "state_set", "state_query", "checkpoint_create",
                    "checkpoint_restore", "log_query"} <= set(tools)
            ann = tools["read_text_file"].annotations
            assert ann is not None and ann.read_only_hint is True
            ann = tools["checkpoint_restore"].annotations
            assert ann is not None and ann.read_only_hint is False and ann.destructive_hint is True
            assert tools["read_text_file"].output_schema is not None

            # files, with versions
            got = await ok(c, "read_text_file", path="report.md")
            assert got["content"] == "# report\ndraft\n"
            v1 = got["version"]
            ed = await ok(c, "edit_file", path="report.md", edits=[{"oldText": "draft", "newText": "final"}],
                          if_version=v1)
            assert "-draft" in ed["diff"] and "+final" in ed["diff"] and ed["version"] != v1
            assert human.read_bytes("report.md") == b"# report\nfinal\n"
            assert human.stat("report.md").etag == ed["version"]  # the version is the store's etag
            human.write_bytes("report.md", b"# report\nhuman edit\n")
            e = await err(c, "write_file", path="report.md", content="lost?", if_version=ed["version"])
            assert e.startswith("Error executing tool write_file: ESTALE") and "by human" in e, e
            assert human.read_bytes("report.md") == b"# report\nhuman edit\n"
            await ok(c, "create_directory", path="notes/2026")
            await ok(c, "write_file", path="notes/2026/a.md", content="a")
            moved = await ok(c, "move_file", source="notes/2026/a.md", destination="notes/b.md")
            assert moved["kind"] == "file" and moved["size"] == 1
            listing = await ok(c, "list_directory", path="notes")
            assert [(x["name"], x["kind"]) for x in listing["entries"]] == [("2026", "dir"), ("b.md", "file")]
            assert (await ok(c, "search_files", pattern="*.md"))["paths"] == ["notes/b.md", "other.md",
                                                                              "report.md"]
            assert human.read_bytes("notes/b.md") == b"a"

            # locks: the same leases as the Python API and the CLI
            lk = await ok(c, "lock_acquire", path="report.md")
            assert lk["token"] >= 1 and lk["holders"][0]["agent"] == "bot"
            with pytest.raises(WouldBlock), human.lock("report.md", wait=0):
                pass
            rows = LeaseStore(human.store, "research").list()  # what `agentfs locks` lists
            assert [(r.path, r.holders[0].agent) for r in rows] == [("report.md", "bot")]
            with human.lock("other.md", wait=0):
                e = await err(c, "lock_acquire", path="other.md")
                assert "EWOULDBLOCK" in e or "EAGAIN" in e, e
                assert "human" in e, e
            lk2 = await ok(c, "lock_acquire", path="other.md", mode="shared", wait_s=5)
            assert lk2["mode"] == "shared"
            assert (await ok(c, "lock_release", path="other.md"))["held_by_this_session"] is False
            assert (await ok(c, "locks_list"))["held_by_this_session"] == ["report.md"]

            # agent state
            st = await ok(c, "request_review", path="report.md", note="please check")
            assert st["state"]["status"] == "review" and st["state"]["updated_by"] == "bot"
            assert human.state("report.md").note == "please check"  # type: ignore[union-attr]
            q = await ok(c, "state_query", status="review")
            assert [r["path"] for r in q["rows"]] == ["report.md"]
            st = await ok(c, "state_set", path="report.md", owner="bot", labels=["q4", "finance"], ttl="7d")
            assert st["state"]["labels"] == ["q4", "finance"] and st["state"]["expires_at"] is not None
            st = await ok(c, "state_set", path="report.md", clear=["ttl"])
            assert st["state"]["expires_at"] is None
            e = await err(c, "state_set", path="report.md", status="shipped")
            assert "EINVAL" in e and "known:" in e, e

            # checkpoints
            cp = await ok(c, "checkpoint_create", name="before", note="review")
            assert cp["name"] == "before" and cp["by"] == "bot"
            await ok(c, "write_file", path="report.md", content="rewritten\n")
            d = await ok(c, "checkpoint_diff", a="before")
            assert d["changed"] == ["report.md"] and "report.md" in d["markdown"]
            old = await ok(c, "checkpoint_read_file", name="before", path="report.md")
            assert old["content"] == "# report\nhuman edit\n"
            rs = await ok(c, "checkpoint_restore", name="before")
            assert rs["undo"]
            assert human.read_bytes("report.md") == b"# report\nhuman edit\n"
            names = [x["name"] for x in (await ok(c, "checkpoint_list"))["checkpoints"]]
            assert names[0] == "before" and rs["undo"] in names

            # the audit log shows the session's changes, attributed
            log = await ok(c, "log_query", path="report.md", agent="bot")
            actions = {r["action"] for r in log["records"]}
            assert {"write", "state"} <= actions, actions
        # the session ended: its lock is given back
        with human.lock("report.md", wait=0):
            pass

    try:
        run(main)
    finally:
        human.close()
    assert_clean(url)


# -- in-process sessions: bad input, bounds, read-only, S3 -----------------------------------------


def test_bad_input_is_a_tool_error(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"

    async def main() -> None:
        async with inproc(url, max_read_bytes=100) as (c, app):
            await ok(c, "write_file", path="a.txt", content="one\ntwo\nthree\n")
            await ok(c, "create_directory", path="d")
            app.client.write_bytes("big.txt", b"x\n" * 200)
            app.client.write_bytes("bin.dat", b"\xff\xfe\x00\x01")
            for p in ("../a.txt", "/etc/passwd", "d/../../x", "./a.txt"):
                assert "EINVAL" in await err(c, "read_text_file", path=p)
                assert "EINVAL" in await err(c, "write_file", path=p, content="x")
            assert "ENOENT" in await err(c, "read_text_file", path="missing.txt")
            assert "EISDIR" in await err(c, "read_text_file", path="d")
            assert "ENOENT" in await err(c, "write_file", path="nodir/x.txt", content="x")
            assert "ENOENT" in await err(c, "edit_file", path="missing.txt",
                                         edits=[{"oldText": "a", "newText": "b"}])
            e = await err(c, "edit_file", path="a.txt", edits=[{"oldText": "four", "newText": "4"}])
            assert "EINVAL" in e and "oldText not found" in e
            assert app.client.read_bytes("a.txt") == b"one\ntwo\nthree\n"  # nothing written
            assert "EEXIST" in await err(c, "move_file", source="a.txt", destination="big.txt")
            # bounded reads
            e = await err(c, "read_text_file", path="big.txt")
            assert "E2BIG" in e and "400 bytes" in e, e
            head = await ok(c, "read_text_file", path="big.txt", head=3)
            assert head["content"] == "x\n" * 3 and head["truncated"] and head["size"] == 400
            tail = await ok(c, "read_text_file", path="a.txt", tail=2)
            assert tail["content"] == "two\nthree\n" and tail["truncated"]
            assert (await ok(c, "read_text_file", path="big.txt", max_bytes=5))["content"] == "x\nx\nx"
            assert "E2BIG" in await err(c, "read_media_file", path="big.txt")
            assert "EINVAL" in await err(c, "read_text_file", path="bin.dat")
            media = await ok(c, "read_media_file", path="bin.dat")
            assert base64.b64decode(media["data"]) == b"\xff\xfe\x00\x01"
            assert media["mime_type"] == "application/octet-stream"
            # arguments that fail the schema
            assert "head" in await err(c, "read_text_file", path="a.txt", head=-1, one_line=False)
            assert "mode" in await err(c, "lock_acquire", path="a.txt", mode="sideways", one_line=False)
            assert "wait_s" in await err(c, "lock_acquire", path="a.txt", wait_s=1e6, one_line=False)
            # locks, state, checkpoints, log
            assert "ENODATA" in await err(c, "lock_release", path="a.txt")
            assert "ENOENT" in await err(c, "lock_acquire", path="missing.txt")
            await ok(c, "lock_acquire", path="a.txt")
            assert "already holds" in await err(c, "lock_acquire", path="a.txt")
            assert "EINVAL" in await err(c, "state_set", path="a.txt", ttl="soon")
            assert "EINVAL" in await err(c, "state_set", path="a.txt")
            assert "ENOENT" in await err(c, "state_get", path="missing.txt")
            assert "ENOENT" in await err(c, "checkpoint_restore", name="nope")
            assert "ENOENT" in await err(c, "checkpoint_read_file", name="nope", path="a.txt")
            assert "EINVAL" in await err(c, "log_query", since="yesterday-ish")
            # and the session still works
            assert (await ok(c, "read_text_file", path="a.txt"))["content"] == "one\ntwo\nthree\n"

    run(main)
    assert_clean(url)


def test_read_only_serves_only_reading_tools(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"

    async def main() -> None:
        async with inproc(url, read_only=True) as (c, app):
            app.client.write_bytes("a.txt", b"hi")
            names = {t.name for t in (await c.list_tools()).tools}
            assert {"read_text_file", "list_directory", "state_get", "locks_list", "log_query"} <= names
            assert not names & {"write_file", "edit_file", "move_file", "lock_acquire", "state_set",
                                "checkpoint_restore", "checkpoint_create", "create_directory"}
            await err(c, "write_file", path="a.txt", content="changed")
            assert (await ok(c, "read_text_file", path="a.txt"))["content"] == "hi"

    run(main)
    assert app_bytes(url, "a.txt") == b"hi"
    assert_clean(url)


# -- a real mount: the MCP session and a mounted agent share files and locks -----------------------


def test_a_racing_writer_is_never_overwritten(tmp_path: Path) -> None:
    """A writer that commits between an edit's read and its upload wins; the edit
    fails (ESTALE) and its bytes are kept in a conflict copy."""
    from agentfs.errors import ConflictError

    url = f"file://{tmp_path}/store"
    with McpApp(agentfs.open_workspace(url, "ws", agent="bot")) as app, \
            agentfs.open_workspace(url, "ws", agent="racer") as racer:
        app.client.write_bytes("a.txt", b"base\n")

        def edit(current: bytes) -> bytes:
            racer.write_bytes("a.txt", b"racer\n")
            return current + b"mine\n"

        with pytest.raises(ConflictError) as exc:
            app.files.replace("a.txt", b"", None, edit=edit)
        assert racer.read_bytes("a.txt") == b"racer\n"
        assert racer.read_bytes(exc.value.copy) == b"base\nmine\n"
    assert_clean(url)


def test_sigterm_gives_the_locks_back(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, "ws", agent="human") as human:
        human.write_bytes("a.txt", b"a")

        async def main() -> None:
            async with stdio_session(url, "ws", "--lease-ttl", "600") as c:
                lk = await ok(c, "lock_acquire", path="a.txt")
                pid = lk["holders"][0]["pid"]
                assert pid != os.getpid()
                os.kill(pid, signal.SIGTERM)  # the server this session spawned
                with anyio.fail_after(20):
                    while True:
                        try:
                            with human.lock("a.txt", wait=0):
                                return  # given back long before the 600 s TTL
                        except WouldBlock:
                            await anyio.sleep(0.05)

        run(main)
    assert_clean(url)


@pytest.mark.parametrize("args, code, words", [
    (["nosuch"], 2, "no such workspace"),
    (["ws/a.txt"], 64, "a workspace, not a path"),
    (["ws", "--max-read-bytes", "0"], 64, "must be positive"),
    (["ws", "--log-level", "loud"], 64, "bad --log-level"),
])
def test_cli_refuses_bad_targets_and_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], args: list[str], code: int,
                                             words: str) -> None:
    from agentfs.cli import main

    url = f"file://{tmp_path}/store"
    with agentfs.open_workspace(url, "ws") as w:
        w.write_bytes("a.txt", b"a")
    monkeypatch.setenv("AGENTFS_AGENT", "t")  # restored afterwards (the command sets it for the session)
    monkeypatch.setattr(sys, "argv", ["agentfs", "mcp", "--store", url, *args])
    with pytest.raises(SystemExit) as exc:
        main()
    err_text = capsys.readouterr().err.strip()
    assert exc.value.code == code, err_text
    assert err_text.startswith("agentfs: ") and words in err_text.lower() and "\n" not in err_text, err_text


def test_reference_server_tools(tmp_path: Path) -> None:
    """The reference filesystem server's listing and multi-read tools, by name and argument shape."""
    url = f"file://{tmp_path}/store"

    async def main() -> None:
        async with inproc(url) as (c, app):
            app.client.mkdir("docs/old", parents=True)
            app.client.write_bytes("docs/a.md", b"aaaa")
            app.client.write_bytes("docs/old/b.md", b"b")
            app.client.write_bytes("big.csv", b"x" * 10)
            tree = await ok(c, "directory_tree")
            docs = next(t for t in tree["children"] if t["name"] == "docs")
            assert sorted((t["name"], t["kind"]) for t in docs["children"]) == [("a.md", "file"), ("old", "dir")]
            old = next(t for t in docs["children"] if t["name"] == "old")
            assert [t["name"] for t in old["children"]] == ["b.md"]
            by_size = await ok(c, "list_directory_with_sizes", path="", sortBy="size")
            assert [e["name"] for e in by_size["entries"]] == ["big.csv", "docs"]
            found = await ok(c, "search_files", pattern="*.md", excludePatterns=["old"])
            assert found["paths"] == ["docs/a.md"]
            multi = await ok(c, "read_multiple_files", paths=["docs/a.md", "nope.md", "../x"])
            assert multi["files"][0]["content"] == "aaaa"
            assert "ENOENT" in multi["files"][1]["error"] and "EINVAL" in multi["files"][2]["error"]
            assert "EINVAL" in await err(c, "directory_tree", path="big.csv")

    run(main)
    assert_clean(url)


def test_changes_are_attributed_to_the_client_by_default(tmp_path: Path) -> None:
    from mcp.types import Implementation

    url = f"file://{tmp_path}/store"

    async def main() -> None:
        app = McpApp(agentfs.open_workspace(url, "ws"), McpSettings(agent_from_client=True))
        try:
            async with Client(app.server, client_info=Implementation(name="claude-code\n", version="1")) as c:
                await ok(c, "write_file", path="a.md", content="a")
                st = await ok(c, "request_review", path="a.md", note="look")
                assert st["state"]["updated_by"] == "claude-code"
                lk = await ok(c, "lock_acquire", path="a.md")
                assert lk["holders"][0]["agent"] == "claude-code"
                rows = (await ok(c, "log_query", path="a.md"))["records"]
                assert rows and {r["agent"] for r in rows} == {"claude-code"}, rows
        finally:
            app.close()

    run(main)
    assert_clean(url)


def test_files_are_resources(tmp_path: Path) -> None:
    from mcp import MCPError

    url = f"file://{tmp_path}/store"

    async def main() -> None:
        async with inproc(url, max_read_bytes=100) as (c, app):
            app.client.mkdir("d")
            app.client.write_bytes("d/a.md", b"hello")
            app.client.write_bytes("b.bin", b"\xff\x00")
            app.client.write_bytes("big.txt", b"x" * 200)
            templates = (await c.list_resource_templates()).resource_templates
            assert [t.uri_template for t in templates] == ["agentfs://ws/{+path}"]
            got = await c.read_resource("agentfs://ws/d/a.md")
            assert got.contents[0].text == "hello"  # type: ignore[union-attr]
            for uri, words in (("agentfs://ws/nope", "ENOENT"), ("agentfs://ws/d/%2e%2e/x", "EINVAL"),
                               ("agentfs://ws/b.bin", "read_media_file"), ("agentfs://ws/big.txt", "E2BIG")):
                with pytest.raises(MCPError) as exc:
                    await c.read_resource(uri)
                assert words in str(exc.value), (uri, exc.value)

    run(main)
    assert_clean(url)
