"""Previews of agent-written files for the review page.

Markdown is rendered by markdown-it-py with raw HTML off (an agent's ``<script>``
becomes text) and the result is cleaned again by nh3 (the Ammonia sanitizer:
no scripts, no event handlers, no ``javascript:`` URLs), so a preview can never
run code in the reviewer's browser even if one layer had a gap; the pages are
also served under a Content-Security-Policy without any script source
(:mod:`agentfs.web.security`).  Other text is shown escaped by the templates.

Error contract: pure functions; nothing raises for any input bytes.
Concurrency: stateless apart from the module's parser (read-only after import).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import nh3
from markdown_it import MarkdownIt

__all__ = ["IMAGE_TYPES", "Preview", "preview", "render_markdown"]

_md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable("table")

#: Images shown inline (their bytes served by the raw route with this type).
#: No SVG: an SVG is a document that can carry script.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
               ".webp": "image/webp"}
_MARKDOWN = {".md", ".markdown", ".mdown"}


@dataclass(frozen=True)
class Preview:
    """How a file is shown: ``kind`` is markdown, text, image or binary."""

    kind: str
    html: str = ""  # sanitized HTML (markdown)
    text: str = ""  # raw text, escaped by the template
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
    return Preview("text", text=text, truncated=truncated)
