"""The Markdown summary written beside every LangGraph checkpoint record.

What a person wants when opening ``<checkpoint_id>.md`` on a mount or in the
bucket: which step it is, which nodes ran, which channels changed (with a short
view of their values), the last messages of a ``messages`` channel, the pending
writes (an interrupt shows here), and how to bring the files of that step back.

Error contract: never raises for odd values (each value is shown through a
bounded ``repr``).  Concurrency: pure functions.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from typing import Any

from agentfs.langgraph.records import CheckpointRecord

__all__ = ["summary_markdown"]

_VALUE_CHARS = 300
_MESSAGES = 5


def _short(value: Any, limit: int = _VALUE_CHARS) -> str:
    try:
        text = repr(value)
    except Exception:  # a user's object with a broken __repr__: still summarise the rest
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", " ").replace("`", "'")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _message_line(m: Any) -> str:
    kind = getattr(m, "type", None) or (m.get("type") if isinstance(m, Mapping) else None) \
        or (m.get("role") if isinstance(m, Mapping) else None) or type(m).__name__
    content = getattr(m, "content", None)
    if content is None and isinstance(m, Mapping):
        content = m.get("content")
    if content is None:
        content = m
    text = content if isinstance(content, str) else _short(content)
    text = text.replace("\n", " ")
    return f"- **{kind}**: {text[:_VALUE_CHARS]}"


def _nodes_that_ran(checkpoint: Mapping[str, Any], parent: Mapping[str, Any] | None) -> list[str]:
    seen = checkpoint.get("versions_seen") or {}
    before = (parent or {}).get("versions_seen") or {}
    return sorted(n for n, v in seen.items() if before.get(n) != v)


def summary_markdown(rec: CheckpointRecord, checkpoint: Mapping[str, Any],
                     parent: Mapping[str, Any] | None, changed: Sequence[str],
                     pending: Sequence[tuple[str, str, Any]]) -> str:
    """The summary of one checkpoint (``pending``: (task_id, channel, value))."""
    md = rec.metadata_json
    when = _dt.datetime.fromtimestamp(rec.created, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines = [f"# LangGraph checkpoint `{rec.checkpoint_id}`", "",
             f"- thread: `{rec.thread_id}`, namespace: `{rec.checkpoint_ns or '(root graph)'}`",
             f"- step: {md.get('step', '?')}, source: {md.get('source', '?')}",
             f"- parent: `{rec.parent_checkpoint_id}`" if rec.parent_checkpoint_id else "- parent: (none)",
             f"- written: {when}" + (f" by `{rec.agent}`" if rec.agent else "")]
    if rec.files is not None:
        lines.append(f"- files: agentfs checkpoint `{rec.files.checkpoint}` of workspace "
                     f"`{rec.files.workspace}` (`saver.restore_files(config)`, or "
                     f"`agentfs checkpoint restore` to rewind the thread too)")
    nodes = _nodes_that_ran(checkpoint, parent)
    lines += ["", "## What changed", "",
              f"- nodes that ran: {', '.join(f'`{n}`' for n in nodes) if nodes else '(none)'}",
              f"- channels updated: {', '.join(f'`{c}`' for c in changed) if changed else '(none)'}"]
    values = checkpoint.get("channel_values") or {}
    shown = [c for c in changed if c in values and c != "messages"]
    if shown:
        lines += ["", "## Updated values", ""]
        lines += [f"- `{c}`: `{_short(values[c])}`" for c in shown]
    messages = values.get("messages")
    if isinstance(messages, list) and messages:
        lines += ["", f"## Last messages ({min(len(messages), _MESSAGES)} of {len(messages)})", ""]
        lines += [_message_line(m) for m in messages[-_MESSAGES:]]
    lines += ["", "## Pending writes", ""]
    lines += [f"- task `{t}` → `{ch}`: `{_short(v)}`" for t, ch, v in pending] or ["- (none)"]
    return "\n".join(lines) + "\n"
