"""Agent state: the typed ``user.agentfs.*`` extended attributes.

Agents record where their work stands on the files themselves::

    user.agentfs.status      one status of the workspace lifecycle (default:
                             draft -> in_progress -> review -> approved -> final,
                             plus failed and archived); transitions are checked
    user.agentfs.owner       an agent name (1-128 printable characters)
    user.agentfs.task        a task id (1-128 printable characters)
    user.agentfs.labels      a JSON list of strings or a comma list; stored as a
                             JSON list (deduplicated, in the order given)
    user.agentfs.ttl         a duration (``90``, ``90s``, ``30m``, ``1h``,
                             ``2d``, ``1w``, ``1h30m``); stored as JSON
                             ``{"seconds", "expires_at", "expires"}`` with the
                             absolute expiry; expired files are pruned
    user.agentfs.note        free UTF-8 text up to 4 KiB
    user.agentfs.updated_by  set by agentfs on every state change (read-only)
    user.agentfs.updated_at  set by agentfs (ISO 8601 UTC; read-only)
    user.agentfs.lifecycle   on the workspace root only: the lifecycle as JSON
                             (see :class:`agentfs.models.Lifecycle`)
    user.agentfs.conflict    set by agentfs on conflict copies (free-form)
    user.agentfs.lock        a lease, not a stored attribute: a write through
                             the Workspace (Python API) is refused with EINVAL
                             pointing to ``agentfs.lock()`` /
                             ``WorkspaceClient.lock()`` (on a mount vfs.py
                             intercepts the name before the Workspace);
                             removing a stale stored value is allowed

Any other ``user.agentfs.<name>`` is refused.  Plain ``user.*`` names stay
free-form.

Error contract: a bad name or value raises :class:`InvalidState` (EINVAL,
logged once at WARNING by the FUSE boundary); a write or removal of
``updated_by``/``updated_at`` raises :class:`ReadOnlyAttribute` (EPERM).

Concurrency: the pure functions here run in the caller's trio thread between
awaits; :func:`prune` and :func:`background` are trio tasks of a mount (or of
a :class:`agentfs.api.WorkspaceClient`), using the Workspace's own operations.
A status transition is checked against this mount's view of the file; two
mounts racing may both succeed (both changes are in the journal, last wins).
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from pydantic import ValidationError

from agentfs.config import settings
from agentfs.durations import parse_seconds
from agentfs.errors import AgentFSError, CorruptRecord, InvalidState, NotFound, ReadOnlyAttribute
from agentfs.identity import Caller
from agentfs.journal import META, Journal
from agentfs.models import (
    CheckpointOp,
    Commit,
    DelOp,
    Entry,
    Lifecycle,
    MoveOp,
    PutOp,
    Record,
    StateRow,
    TTLValue,
    decode_xattr,
    encode_xattr,
)
from agentfs.namespace import InodeTable, Namespace, Node
from agentfs.store.base import ObjectStore

if TYPE_CHECKING:
    from agentfs.workspace import Workspace

__all__ = [
    "ATTRS",
    "PREFIX",
    "STATE_MD",
    "AttrSpec",
    "Damaged",
    "RecentChanges",
    "XattrChange",
    "background",
    "describe_change",
    "expired_paths",
    "flush_state_md",
    "format_ttl",
    "lifecycle_of",
    "parse_duration",
    "prepare_remove",
    "prepare_set",
    "prune",
    "read_records",
    "register",
    "render_state_md",
    "replay",
    "state_rows",
    "write_state_md",
]

log = logging.getLogger(__name__)

PREFIX = "user.agentfs."
#: Name of the generated summary under ``.agentfs/<ws>/``.
STATE_MD = "STATE.md"
#: The agent name that TTL pruning is recorded under.
TTL_AGENT = "agentfs:ttl"
#: Records whose action is one of these are state changes (STATE.md, log filters).
STATE_ACTIONS = frozenset({"state", "expire"})
#: Seconds between TTL prune passes of a mount (tests shorten it).
PRUNE_INTERVAL = settings().prune_interval
#: STATE.md is rewritten at most this often by a mount.
STATE_MD_INTERVAL = settings().state_md_interval
#: Journal detail values (old/new) are cut to this many characters.
DETAIL_MAX = 512

_PRINTABLE = re.compile(r"^[^\x00-\x1f\x7f]+$")
_LABEL = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,64}$")


# -- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Ctx:
    """What a validator may look at besides the value."""

    old: bytes | None
    lifecycle: Lifecycle
    is_root: bool
    now: float


def _text(name: str, value: bytes, *, one_line: bool = True) -> str:
    try:
        s = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidState(f"{PREFIX}{name}: value is not UTF-8") from None
    s = s.strip()
    if s.startswith('"'):
        try:
            s = json.loads(s)
        except ValueError:
            raise InvalidState(f"{PREFIX}{name}: bad JSON string") from None
        if not isinstance(s, str):
            raise InvalidState(f"{PREFIX}{name}: expected a string")
    if not s:
        raise InvalidState(f"{PREFIX}{name}: empty value")
    if one_line and not _PRINTABLE.match(s):
        raise InvalidState(f"{PREFIX}{name}: control characters are not allowed")
    return s


def _status(value: bytes, ctx: _Ctx) -> bytes:
    new = _text("status", value)
    if new not in ctx.lifecycle.statuses:
        raise InvalidState(f"{PREFIX}status: unknown status {new!r} (known: {', '.join(ctx.lifecycle.statuses)})")
    old = ctx.old.decode("utf-8", "replace") if ctx.old is not None else None
    if not ctx.lifecycle.allowed(old, new):
        if old is None or old not in ctx.lifecycle.statuses:
            allowed = ctx.lifecycle.initial or []
        else:
            allowed = (ctx.lifecycle.transitions or {}).get(old, [])
        raise InvalidState(f"{PREFIX}status: transition {old or '(none)'} -> {new} is not allowed "
                           f"(allowed: {', '.join(allowed) or 'none'})")
    return new.encode()


def _name_like(name: str) -> Callable[[bytes, _Ctx], bytes]:
    def check(value: bytes, ctx: _Ctx) -> bytes:
        s = _text(name, value)
        if len(s) > 128:
            raise InvalidState(f"{PREFIX}{name}: longer than 128 characters")
        return s.encode()
    return check


def _labels(value: bytes, ctx: _Ctx) -> bytes:
    try:
        raw = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidState(f"{PREFIX}labels: value is not UTF-8") from None
    items: Any
    if raw.startswith("["):
        try:
            items = json.loads(raw)
        except ValueError:
            raise InvalidState(f"{PREFIX}labels: bad JSON") from None
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise InvalidState(f"{PREFIX}labels: expected a JSON list of strings")
    else:
        items = [p.strip() for p in raw.split(",") if p.strip()]
    out: list[str] = []
    for item in items:
        if not _LABEL.match(item):
            raise InvalidState(f"{PREFIX}labels: bad label {item[:70]!r} (1-64 of A-Z a-z 0-9 _ . : / @ + -)")
        if item not in out:
            out.append(item)
    if len(out) > 64:
        raise InvalidState(f"{PREFIX}labels: more than 64 labels")
    return json.dumps(out).encode()


def parse_duration(text: str) -> float:
    """Seconds of a TTL (the grammar of :func:`agentfs.durations.parse_seconds`).

    Raises :class:`InvalidState` for anything else or a non-positive duration.
    """
    secs = parse_seconds(text)
    if secs is None:
        raise InvalidState(f"{PREFIX}ttl: bad duration {text[:40]!r} (e.g. 3600, 90s, 30m, 1h, 2d)")
    if secs <= 0:
        raise InvalidState(f"{PREFIX}ttl: duration must be positive")
    return secs


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ttl(value: bytes, ctx: _Ctx) -> bytes:
    try:
        raw = value.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidState(f"{PREFIX}ttl: value is not UTF-8") from None
    if raw.startswith("{"):
        # The stored form (cp -a, rsync -X): keep the absolute expiry it carries.
        try:
            v = TTLValue.model_validate_json(raw)
        except ValidationError as e:
            raise InvalidState(f"{PREFIX}ttl: bad JSON ({e.errors()[0]['msg']})") from None
    else:
        secs = parse_duration(raw)
        try:
            v = TTLValue(seconds=secs, expires_at=ctx.now + secs)
        except ValidationError:
            raise InvalidState(f"{PREFIX}ttl: longer than 10 years") from None
    v = v.model_copy(update={"expires": _iso(v.expires_at)})
    return v.model_dump_json().encode()


def _note(value: bytes, ctx: _Ctx) -> bytes:
    return _text("note", value, one_line=False).encode()


def _lifecycle(value: bytes, ctx: _Ctx) -> bytes:
    if not ctx.is_root:
        raise InvalidState(f"{PREFIX}lifecycle: only the workspace root carries the lifecycle")
    try:
        lc = Lifecycle.model_validate_json(value)
    except ValidationError as e:
        err = e.errors()[0]
        raise InvalidState(f"{PREFIX}lifecycle: {'.'.join(str(x) for x in err['loc'])}: {err['msg']}") from None
    return lc.model_dump_json(exclude_none=True).encode()


def _read_only(value: bytes, ctx: _Ctx) -> bytes:
    raise AssertionError("unreachable")  # read_only specs are refused before


@dataclass(frozen=True)
class AttrSpec:
    """One known ``user.agentfs.<name>``.

    ``validate`` turns a written value into the stored one (raising
    :class:`InvalidState`); None stores the bytes as given (free-form).
    ``stamped`` attributes are agent state: a change also sets
    ``updated_by``/``updated_at`` and is journaled as ``state`` with old -> new.
    ``refused``: when set, every write is refused (InvalidState) with this
    message; removal stays a pass-through.
    """

    name: str
    validate: Callable[[bytes, _Ctx], bytes] | None
    max_size: int = 256
    stamped: bool = True
    read_only: bool = False
    refused: str = ""


#: The registry of known names (without the prefix).  Another feature plugs a
#: handler in with :func:`register` (e.g. locks replacing the pass-through).
ATTRS: dict[str, AttrSpec] = {}


def register(spec: AttrSpec, *, replace: bool = False) -> None:
    """Add a ``user.agentfs.<name>`` to the schema."""
    if spec.name in ATTRS and not replace:
        raise ValueError(f"{PREFIX}{spec.name} is already registered")
    ATTRS[spec.name] = spec


for _spec in (
    AttrSpec("status", _status, max_size=64),
    AttrSpec("owner", _name_like("owner"), max_size=512),
    AttrSpec("task", _name_like("task"), max_size=512),
    AttrSpec("labels", _labels, max_size=4096),
    AttrSpec("ttl", _ttl, max_size=256),
    AttrSpec("note", _note, max_size=4096),
    AttrSpec("updated_by", _read_only, read_only=True, stamped=False),
    AttrSpec("updated_at", _read_only, read_only=True, stamped=False),
    AttrSpec("lifecycle", _lifecycle, max_size=16384),
    # Set by agentfs on conflict copies; users may clear or rewrite it.
    AttrSpec("conflict", None, max_size=64 * 1024, stamped=False),
    # Locks: a lease, taken on a mount (vfs.py intercepts the name) or
    # with WorkspaceClient.lock(); never stored as an ordinary xattr.
    AttrSpec("lock", None, max_size=64 * 1024, stamped=False,
             refused="user.agentfs.lock is a lease, not a stored attribute: use agentfs.lock() "
                     "on a mounted file or WorkspaceClient.lock()"),
):
    register(_spec)


# -- the hook called by Workspace.setxattr/removexattr -----------------------------------------


@dataclass
class XattrChange:
    """What a validated xattr write does: the new xattr map and its journal record."""

    xattrs: dict[str, str]
    action: str
    detail: dict[str, Any]


def lifecycle_of(root: Entry) -> Lifecycle:
    """The lifecycle stored on a workspace root (the default when absent or unreadable)."""
    raw = root.xattrs.get(PREFIX + "lifecycle")
    if raw is not None:
        try:
            return Lifecycle.model_validate_json(decode_xattr(raw))
        except (ValidationError, ValueError):
            log.warning("unreadable %slifecycle on the workspace root; using the default", PREFIX)
    return Lifecycle.default()


def _cut(v: bytes | None) -> str | None:
    if v is None:
        return None
    s = v.decode("utf-8", "replace")
    return s if len(s) <= DETAIL_MAX else s[:DETAIL_MAX] + "..."


def _spec(name: str, path: str) -> AttrSpec | None:
    if not name.startswith(PREFIX):
        return None
    short = name[len(PREFIX):]
    spec = ATTRS.get(short)
    if spec is None:
        raise InvalidState(f"unknown attribute {name} (known: {', '.join(sorted(ATTRS))})", path=path)
    return spec


def _stamp(xattrs: dict[str, str], agent: str, now: float) -> None:
    xattrs[PREFIX + "updated_by"] = encode_xattr(agent.encode())
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    xattrs[PREFIX + "updated_at"] = encode_xattr(stamp.encode())


def prepare_set(node: Node, root: Entry, name: str, value: bytes, caller: Caller, *, path: str,
                default_agent: str = "", now: float | None = None) -> XattrChange | None:
    """Validate a write of ``name`` on ``node``.

    None: not a typed name (plain ``user.*`` or a pass-through name); the
    caller stores it as before.  Otherwise the new xattr map, with the value
    in its stored form and the ``updated_by``/``updated_at`` stamps.
    """
    spec = _spec(name, path)
    if spec is None:
        return None
    if spec.read_only:
        raise ReadOnlyAttribute(f"{name} is maintained by agentfs", path=path)
    if spec.refused:
        raise InvalidState(spec.refused, path=path)
    if spec.validate is None:
        return None
    if len(value) > spec.max_size:
        raise InvalidState(f"{name}: value of {len(value)} bytes is larger than {spec.max_size}", path=path)
    now = time.time() if now is None else now
    old_raw = node.entry.xattrs.get(name)
    old = decode_xattr(old_raw) if old_raw is not None else None
    ctx = _Ctx(old=old, lifecycle=lifecycle_of(root), is_root=node.parent is None, now=now)
    try:
        stored = spec.validate(value, ctx)
    except InvalidState as e:
        e.path = path
        raise
    xattrs = {**node.entry.xattrs, name: encode_xattr(stored)}
    if spec.stamped:
        _stamp(xattrs, caller.agent or default_agent, now)
    return XattrChange(xattrs, "state", {"name": spec.name, "old": _cut(old), "new": _cut(stored)})


def prepare_remove(node: Node, name: str, caller: Caller, *, path: str, default_agent: str = "",
                   now: float | None = None) -> XattrChange | None:
    """Validate a removal of an existing ``name`` (None: not a typed name)."""
    spec = _spec(name, path)
    if spec is None:
        return None
    if spec.read_only:
        raise ReadOnlyAttribute(f"{name} is maintained by agentfs", path=path)
    if spec.validate is None:
        return None
    xattrs = {k: v for k, v in node.entry.xattrs.items() if k != name}
    if spec.stamped:
        _stamp(xattrs, caller.agent or default_agent, time.time() if now is None else now)
    return XattrChange(xattrs, "state", {"name": spec.name, "old": _cut(decode_xattr(node.entry.xattrs[name])),
                                         "new": None})


# -- the index: state of every entry ------------------------------------------------------------


def _get(entry: Entry, short: str) -> str | None:
    raw = entry.xattrs.get(PREFIX + short)
    return decode_xattr(raw).decode("utf-8", "replace") if raw is not None else None


def expires_at(entry: Entry) -> float | None:
    raw = _get(entry, "ttl")
    if raw is None:
        return None
    try:
        return TTLValue.model_validate_json(raw).expires_at
    except (ValidationError, ValueError):
        return None


def row_of(path: str, entry: Entry) -> StateRow | None:
    """The state of one entry, or None when it has none."""
    if not any(k.startswith(PREFIX) and (spec := ATTRS.get(k[len(PREFIX):])) is not None and spec.stamped
               for k in entry.xattrs):
        return None
    labels: list[str] = []
    raw = _get(entry, "labels")
    if raw:
        try:
            labels = [str(x) for x in json.loads(raw)]
        except (ValueError, TypeError):
            labels = []
    return StateRow(path=path, kind={"f": "file", "d": "dir", "l": "symlink"}[entry.kind],
                    status=_get(entry, "status"), owner=_get(entry, "owner"), task=_get(entry, "task"),
                    labels=labels, expires_at=expires_at(entry), note=_get(entry, "note"),
                    updated_by=_get(entry, "updated_by"), updated_at=_get(entry, "updated_at"))


def state_rows(ns: Namespace, *, status: str | None = None, owner: str | None = None,
               label: str | None = None, under: str = "") -> list[StateRow]:
    """Every entry with agent state, filtered, by path (the namespace is the index)."""
    under = under.strip("/")
    out = []
    for path, node in ns.walk():
        if node.pending:
            continue
        if under and path != under and not path.startswith(under + "/"):
            continue
        row = row_of(path, node.entry)
        if row is None:
            continue
        if status is not None and row.status != status:
            continue
        if owner is not None and row.owner != owner:
            continue
        if label is not None and label not in row.labels:
            continue
        out.append(row)
    return sorted(out, key=lambda r: r.path)


# -- reading the journal without a Workspace -----------------------------------------------------


@dataclass(frozen=True)
class Damaged:
    """A journal object that could not be read (reported, never fatal)."""

    seq: int
    key: str
    reason: str


def read_records(journal: Journal, *, after: int = 0, workers: int = 16) -> Iterator[Commit | Damaged]:
    """Every journal object after ``after`` in order; damaged ones as :class:`Damaged`.

    Unlike :meth:`Journal.commits_after` this does not stop at a damaged
    record (the audit log must show what follows it); it stops at a gap.
    """
    prefix = f"{journal.prefix}log/"
    keys: list[tuple[int, str]] = []
    for o in journal.store.list(prefix, start_after=journal.log_key(after)):
        try:
            keys.append((int(o.key[len(prefix):].split(".", 1)[0]), o.key))
        except ValueError:
            continue
    keys.sort()

    def fetch(item: tuple[int, str]) -> Commit | Damaged:
        seq, key = item
        try:
            return journal._parse_commit(key, journal.store.get(key))
        except CorruptRecord as e:
            return Damaged(seq, key, e.strerror or "unreadable")
        except NotFound:
            return Damaged(seq, key, "vanished while reading")

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(keys), 256):
            yield from pool.map(fetch, keys[start:start + 256])


def replay(store: ObjectStore, ws: str) -> tuple[Namespace, list[Damaged], list[Record]]:
    """The namespace of ``ws`` (latest state snapshot + the commits after it),
    the damaged records met, and the state-change records seen (for STATE.md).

    Like a mount, the replay stops at the first damaged commit.
    """
    j = Journal(store, ws)
    ns = Namespace(InodeTable(), Entry(kind="d", mode=0o755))
    state = j.latest_state()
    if state is not None:
        ns.load_state(state)
    elif not j.exists():
        raise NotFound("no such workspace", path=ws)
    damaged: list[Damaged] = []
    recent: list[Record] = []
    for c in read_records(j, after=ns.seq):
        if isinstance(c, Damaged):
            damaged.append(c)
            break
        if c.seq != ns.seq + 1:
            break
        for r in c.records:
            ns.apply(r.op, r.time)
            if _notable(r):
                recent.append(r)
        ns.seq = c.seq
    return ns, damaged, recent[-RecentChanges.KEEP:]


# -- STATE.md ---------------------------------------------------------------------------------


def _notable(r: Record) -> bool:
    return r.action in STATE_ACTIONS or (r.action in ("delete", "rmdir", "rename") and r.agent == TTL_AGENT)


class RecentChanges:
    """The latest state changes seen by a workspace (fed by ``Workspace._apply``),
    and whether this mount made one since STATE.md was last written."""

    KEEP = 30

    def __init__(self) -> None:
        self.records: deque[Record] = deque(maxlen=self.KEEP)
        self.dirty = False
        #: time.monotonic() of the last STATE.md write
        self.written = 0.0

    def feed(self, commit: Commit, *, local: bool) -> None:
        for r in commit.records:
            if _notable(r):
                self.records.append(r)
                self.dirty = self.dirty or local
            elif local and (isinstance(r.op, (DelOp, MoveOp)) or
                            (isinstance(r.op, PutOp) and any(k.startswith(PREFIX) for k in r.op.entry.xattrs))):
                self.dirty = True  # a file with state was created, removed or moved


def _path_of(r: Record) -> str:
    op = r.op
    if isinstance(op, MoveOp):
        return f"{op.src} -> {op.dst}"
    if isinstance(op, CheckpointOp):
        return f"@{op.name}"
    return op.path


def _short(name: object, value: object) -> str:
    if value is None:
        return "(none)"
    if name == "ttl" and isinstance(value, str):
        try:
            v = TTLValue.model_validate_json(value)
            return f"{v.seconds:g}s (expires {_iso(v.expires_at)})"
        except (ValidationError, ValueError):
            pass
    return str(value)


def describe_change(detail: dict[str, Any]) -> str:
    """``status: draft -> review`` for a ``state`` record's detail."""
    name = detail.get("name")
    new = detail.get("new")
    return f"{name}: {_short(name, detail.get('old'))} -> {'(removed)' if new is None else _short(name, new)}"


def _what(r: Record) -> str:
    if r.action == "state":
        return describe_change(r.detail)
    if r.agent == TTL_AGENT:
        return "expired (ttl)"
    return r.action


def render_state_md(ws: str, rows: list[StateRow], recent: Iterable[Record], *, now: float | None = None) -> str:
    """The Markdown summary of a workspace's agent state."""
    now = time.time() if now is None else now
    counts: dict[str, int] = {}
    for r in rows:
        key = r.status or "(no status)"
        counts[key] = counts.get(key, 0) + 1
    lines = [f"# State of workspace `{ws}`", "",
             f"Generated by agentfs at {_iso(now)}. Do not edit: it is rewritten on every change.", "",
             "## Status counts", ""]
    if counts:
        lines += ["| status | files |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(counts.items())]
    else:
        lines.append("No file has agent state yet.")
    lines += ["", "## Files", ""]
    if rows:
        lines += ["| path | status | owner | task | labels | expires | updated by | updated at |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows[:500]:
            exp = _iso(r.expires_at) if r.expires_at else ""
            lines.append(f"| `{r.path}` | {r.status or ''} | {r.owner or ''} | {r.task or ''} | "
                         f"{', '.join(r.labels)} | {exp} | {r.updated_by or ''} | {r.updated_at or ''} |")
        if len(rows) > 500:
            lines.append(f"| ... {len(rows) - 500} more (see `agentfs state ls`) | | | | | | | |")
    lines += ["", "## Recent changes", ""]
    rec = list(recent)[::-1]
    if rec:
        lines += ["| when | who | path | change |", "|---|---|---|---|"]
        for r in rec:
            what = _what(r).replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {_iso(r.time)} | {r.agent} | `{_path_of(r)}` | {what} |")
    else:
        lines.append("None recorded since the last state snapshot.")
    return "\n".join(lines) + "\n"


def state_md_key(ws: str) -> str:
    """``.agentfs/<ws>/STATE.md``."""
    return f"{META}/{ws}/{STATE_MD}"


def write_state_md(store: ObjectStore, ws: str, ns: Namespace, recent: Iterable[Record]) -> None:
    """Write ``.agentfs/<ws>/STATE.md`` (synchronous store I/O)."""
    body = render_state_md(ws, state_rows(ns), recent).encode()
    store.put(state_md_key(ws), body)


# -- TTL pruning ---------------------------------------------------------------------------------


def _skip(path: str) -> bool:
    # Checkpoints are read-only views under .snapshots/: never pruned there.
    return path.split("/", 1)[0] == ".snapshots"


def expired_paths(ns: Namespace, now: float) -> list[str]:
    """Top-most committed entries whose ttl has expired (a pruned directory
    takes its subtree with it, so entries below it are not listed)."""
    out: list[str] = []
    for path, node in ns.walk():
        if node.pending or _skip(path):
            continue
        exp = expires_at(node.entry)
        if exp is not None and exp <= now and not any(path.startswith(p + "/") for p in out):
            out.append(path)
    return out


def _busy(ws: Workspace, node: Node) -> bool:
    nodes = [node, *(n for _, n in ws.ns.walk(node))]
    return any(n.opens > 0 or n.ino in ws.open_files or n.pending for n in nodes)


async def prune(ws: Workspace, *, now: float | None = None, dry_run: bool = False) -> list[str]:
    """Remove every expired file or directory of ``ws`` not open here.

    Each removal is an ordinary delete/rmdir by the agent ``agentfs:ttl``
    (so it is in the journal, and whatever a delete does for checkpoints
    happens).  Errors of one path are logged and do not stop the others.
    Returns the paths removed (or, with ``dry_run``, that would be).
    """
    now = time.time() if now is None else now
    caller = Caller(pid=None, uid=os.getuid(), gid=os.getgid(), agent=TTL_AGENT)
    done: list[str] = []
    if not dry_run and expired_paths(ws.ns, now):
        await ws.pull()  # another mount may have pruned them already
    for path in expired_paths(ws.ns, now):
        node = ws.ns.resolve(path)
        if node is None or node.parent is None:
            continue
        if _busy(ws, node):
            log.info("workspace %s: %s expired but is open; pruned later", ws.name, path)
            continue
        if dry_run:
            done.append(path)
            continue
        if not await ws.marks.claim(path):
            continue  # open on another mount, or being pruned there (agentfs/openmarks.py)
        try:
            await ws.pull()  # the claim is ours: nothing committed before it is unseen
            node = ws.ns.resolve(path)
            if node is None or node.parent is None or _busy(ws, node):
                continue
            if node.children is not None:
                below = sorted(ws.ns.walk(node, path), key=lambda pn: pn[0].count("/"), reverse=True)
                for _, n in below:
                    if n.parent is None:
                        continue
                    if n.children is not None:
                        await ws.rmdir(n.parent, n.name, caller)
                    else:
                        await ws.unlink(n.parent, n.name, caller)
                await ws.rmdir(node.parent, node.name, caller)
            else:
                await ws.unlink(node.parent, node.name, caller)
        except AgentFSError as e:
            log.warning("workspace %s: pruning expired %s: %s", ws.name, path, e)
            continue
        finally:
            await ws.marks.release(path)
        log.info("workspace %s: pruned %s (ttl expired)", ws.name, path)
        done.append(path)
    return done


async def background(workspaces: Callable[[], list[Workspace]], *, read_only: bool = False) -> None:
    """A mount's agent-state task: prune expired entries every
    ``PRUNE_INTERVAL`` seconds and rewrite STATE.md (at most every
    ``STATE_MD_INTERVAL`` seconds) after this mount changed state."""
    if read_only:
        return
    last_prune = 0.0
    while True:
        await trio.sleep(min(1.0, PRUNE_INTERVAL, STATE_MD_INTERVAL))
        mono = time.monotonic()
        for ws in workspaces():
            try:
                if mono - last_prune >= PRUNE_INTERVAL:
                    await prune(ws)
                await flush_state_md(ws)
            except AgentFSError as e:
                log.warning("agent state of %s: %s", ws.name, e)
            except Exception:  # a bug must not end the mount's nursery
                log.exception("agent state of %s failed unexpectedly", ws.name)
        if mono - last_prune >= PRUNE_INTERVAL:
            last_prune = mono


async def flush_state_md(ws: Workspace, *, force: bool = False) -> bool:
    """Rewrite STATE.md of ``ws`` if this mount changed state since the last
    write and the debounce interval passed (or ``force``)."""
    recent: RecentChanges = ws.recent
    if not recent.dirty or (not force and time.monotonic() - recent.written < STATE_MD_INTERVAL):
        return False
    recent.dirty = False
    recent.written = time.monotonic()
    body = render_state_md(ws.name, state_rows(ws.ns), list(recent.records)).encode()
    await trio.to_thread.run_sync(ws.store.put, state_md_key(ws.name), body, limiter=ws.limiter)
    return True


def format_ttl(row: StateRow, now: float | None = None) -> str:
    """``expires in 59m`` / ``expired`` for a table cell."""
    if row.expires_at is None:
        return ""
    left = row.expires_at - (time.time() if now is None else now)
    if left <= 0:
        return "expired"
    for unit, secs in (("d", 86400), ("h", 3600), ("m", 60)):
        if left >= secs:
            return f"in {int(left // secs)}{unit}"
    return f"in {int(left)}s"
