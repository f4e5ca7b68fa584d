"""Previews of agent-written files for the review page.

Source code is highlighted by pygments (its output is escaped text in
``<span class>``es; styles in ``/static/code.css``), CSV/TSV and JSONL become the
first rows of a table, other text is shown escaped by the templates.

Markdown is rendered by markdown-it-py with raw HTML off (an agent's ``<script>``
becomes text) and the result is cleaned again by nh3 (the Ammonia sanitizer:
no scripts, no event handlers, no ``javascript:`` URLs), so a preview can never
run code in the reviewer's browser even if one layer had a gap; the pages are
also served under a Content-Security-Policy that runs no inline script
(:mod:`agentfs.web.security`).

Error contract: pure functions; nothing raises for any input bytes.
Concurrency: stateless apart from the module's parser (read-only after import).
"""

from __future__ import annotations

import csv
import io
import json
import posixpath
from dataclasses import dataclass, field

import nh3
from markdown_it import MarkdownIt
from pygments import highlight  # type: ignore[import-untyped]
from pygments.formatters import HtmlFormatter  # type: ignore[import-untyped]
from pygments.lexers import get_lexer_for_filename  # type: ignore[import-untyped]
from pygments.util import ClassNotFound  # type: ignore[import-untyped]

__all__ = ["IMAGE_TYPES", "TABLE_ROWS", "Preview", "highlight_css", "preview", "render_markdown", "table_rows"]

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

#: Images shown inline (their bytes served by the raw route with this type).
#: No SVG: an SVG is a document that can carry script.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
_MARKDOWN = {".md", ".markdown", ".mdown"}
_TABLES = {".csv": ",", ".tsv": "\t"}
_JSONL = {".jsonl", ".ndjson"}
#: Rows of a table preview (the rest: download).
TABLE_ROWS = 200
#: Text larger than this is shown plain (highlighting it would cost more than it helps).
HIGHLIGHT_BYTES = 256 * 1024
_formatter = HtmlFormatter(cssclass="hl", nowrap=False)


@dataclass(frozen=True)
class Preview:
    """How a file is shown: ``kind`` is markdown, code, table, text, image or binary."""

    kind: str
    html: str = ""  # safe HTML (sanitized markdown, or pygments' escaped spans)
    text: str = ""  # raw text, escaped by the template
    rows: list[list[str]] = field(default_factory=list)  # a table's rows, the header first
    truncated: bool = False


def render_markdown(source: str) -> str:
    """Markdown to sanitized HTML (safe to insert into a page as is)."""
    return nh3.clean(_md.render(source), link_rel="noopener noreferrer nofollow")


def preview(path: str, data: bytes, size: int) -> Preview:
    """The preview of ``path`` from its first bytes ``data`` (``size``: the whole file's)."""
    ext = posixpath.splitext(path)[1].lower()
    if ext in IMAGE_TYPES:
        return Preview("image")
    truncated = size > len(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        # a cut at the preview's end may split a character: keep what decodes
        if truncated and e.start >= len(data) - 3:
            text = data[: e.start].decode("utf-8")
        else:
            return Preview("binary", truncated=truncated)
    if "\0" in text:
        return Preview("binary", truncated=truncated)
    if ext in _MARKDOWN:
        return Preview("markdown", html=render_markdown(text), truncated=truncated)
    if ext in _TABLES or ext in _JSONL:
        rows = table_rows(text, ext, cut=truncated)
        return Preview("table", rows=rows, truncated=truncated or len(rows) > TABLE_ROWS)
    if len(data) <= HIGHLIGHT_BYTES:
        try:
            lexer = get_lexer_for_filename(path, stripnl=False)
        except ClassNotFound:
            lexer = None
        if lexer is not None and lexer.name != "Text only":
            return Preview("code", html=highlight(text, lexer, _formatter), truncated=truncated)
    return Preview("text", text=text, truncated=truncated)


def table_rows(text: str, ext: str, *, cut: bool) -> list[list[str]]:
    """The first rows of a CSV/TSV (its header first) or a JSONL file (the keys
    of the first object as the header); a last line cut by the preview is dropped."""
    lines = text.splitlines()
    if cut and lines:
        lines.pop()
    lines = lines[: TABLE_ROWS + 2]
    if ext in _TABLES:
        return [list(r) for r in csv.reader(io.StringIO("\n".join(lines)), delimiter=_TABLES[ext])]
    rows: list[list[str]] = []
    header: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            obj = {"(not JSON)": line}
        if not isinstance(obj, dict):
            obj = {"value": obj}
        if not header:
            header = [str(k) for k in obj]
            rows.append(header)
        rows.append([_cell(obj.get(k)) for k in header])
    return rows


def _cell(v: object) -> str:
    return "" if v is None else v if isinstance(v, str) else json.dumps(v)


def highlight_css() -> str:
    """The stylesheet of highlighted code (served as /static/code.css)."""
    return str(_formatter.get_style_defs(".hl"))
