"""``AgentFSSaver``: a LangGraph checkpoint saver over an agentfs workspace.

Every LangGraph checkpoint is an ordinary workspace file (a JSON record and a
Markdown summary, see :mod:`agentfs.langgraph.records` for the layout), written
through the same core and journal as the Python API: visible on a mount, at its
natural key in the bucket, and in ``agentfs log`` attributed to the agent.

``files=True``: each ``put`` also cuts an agentfs checkpoint (one journal
commit, no bytes copied) right after the record is written, named in the record
(``files.checkpoint``) and naming the LangGraph checkpoint in its note, so each
names the other.  Restoring the agentfs checkpoint (``agentfs checkpoint
restore``) brings back the files *and* the thread as of that step (its latest
checkpoint is then that one); :meth:`AgentFSSaver.restore_files` brings back
the files but keeps the thread's whole history, for LangGraph's time travel.
What the file snapshot holds under each LangGraph durability mode:

- ``sync``: ``put`` returns before the next step starts, so the snapshot holds
  exactly the files closed up to the end of that step;
- ``async`` (LangGraph's default): ``put`` runs while the next step already
  runs, so the snapshot holds every file of its step and possibly some of the
  next step's (never fewer);
- ``exit``: LangGraph puts only when the run ends or is interrupted, so only
  that last checkpoint exists, with the files as of then.

Error contract: bad configs and ids raise :class:`agentfs.errors.InvalidArgument`
(EINVAL); a checkpoint id another writer already stored with other content
raises :class:`agentfs.errors.CheckpointConflict` (ESTALE; the first one stays);
a damaged record raises :class:`agentfs.errors.CorruptRecord` naming its file;
store trouble raises the core's errors.  ``get_tuple`` of an unknown checkpoint
returns None, as LangGraph expects.

Concurrency: the methods are thread-safe (the workspace client is) and may be
called from LangGraph's background threads; the async variants run the sync
ones in a worker thread.  Several processes may share a thread: records are
created with a conditional create (never overwritten), and every call first
catches up with the workspace's journal, so one host reads another's
checkpoints at once.  ``restore_files`` must not race writers of the workspace.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import random
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from agentfs.api import WorkspaceClient, open_workspace
from agentfs.errors import (
    AlreadyExists,
    CheckpointConflict,
    ConflictError,
    CorruptRecord,
    InvalidArgument,
    NotFound,
)
from agentfs.langgraph.records import (
    CheckpointRecord,
    FilesRef,
    PendingWrite,
    StoredValue,
    WriteRecord,
    decode_component,
    encode_component,
    files_checkpoint_name,
    files_checkpoint_prefix,
    ns_dir,
    ns_of_dir,
    parse_record,
    sha256_hex,
)
from agentfs.langgraph.summary import summary_markdown

__all__ = ["DEFAULT_DIRECTORY", "AgentFSSaver"]

log = logging.getLogger(__name__)

#: Where the threads live in the workspace unless told otherwise.
DEFAULT_DIRECTORY = ".agent/threads"
#: Serialized channel values above this size get their own blob file.
DEFAULT_INLINE_LIMIT = 16 * 1024
_SPECIAL = frozenset(WRITES_IDX_MAP)


def _config_target(config: RunnableConfig | None, *, need_thread: bool = True) -> tuple[str, str | None, str | None]:
    """(thread_id, checkpoint_ns or None if absent, checkpoint_id or None) of a config."""
    if config is None:
        return "", None, None
    conf = config.get("configurable") if isinstance(config, dict) else None
    if not isinstance(conf, dict):
        raise InvalidArgument("a LangGraph config needs a 'configurable' dict with a thread_id")
    thread = conf.get("thread_id")
    if isinstance(thread, int | uuid.UUID) and not isinstance(thread, bool):
        thread = str(thread)
    if thread is None and not need_thread:
        thread = ""
    elif not isinstance(thread, str) or not thread:
        raise InvalidArgument(f"config['configurable']['thread_id'] must be a non-empty string, got {thread!r}")
    ns = conf.get("checkpoint_ns")
    if ns is not None and not isinstance(ns, str):
        raise InvalidArgument(f"checkpoint_ns must be a string, got {ns!r}")
    cid = conf.get("checkpoint_id")
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise InvalidArgument(f"checkpoint_id must be a non-empty string, got {cid!r}")
    return thread, ns, cid


class AgentFSSaver(BaseCheckpointSaver[str]):
    """A LangGraph ``BaseCheckpointSaver`` whose checkpoints are workspace files.

    ``client``: an open :class:`agentfs.api.WorkspaceClient` (see :meth:`open`
    to open one by store URL).  ``directory``: the workspace folder of the
    threads.  ``files``: cut an agentfs checkpoint with every LangGraph
    checkpoint (see the module docstring for what it holds per durability mode).
    """

    def __init__(self, client: WorkspaceClient, *, directory: str = DEFAULT_DIRECTORY, files: bool = False,
                 inline_limit: int = DEFAULT_INLINE_LIMIT, serde: SerializerProtocol | None = None,
                 owns_client: bool = False) -> None:
        super().__init__(serde=serde)
        directory = directory.strip("/")
        if not directory:
            raise InvalidArgument("the saver's directory must be a folder of the workspace, not its root")
        self.client = client
        self.directory = directory
        self.files = files
        self.inline_limit = inline_limit
        self._owns_client = owns_client
        self._dirs: set[str] = set()  # folders known to exist (cleared by deletes)
        self._last: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}  # the parent of the next put

    @classmethod
    def open(cls, url: str, workspace: str, *, agent: str = "", endpoint_url: str | None = None,
             create: bool = True, **kw: Any) -> AgentFSSaver:
        """A saver over workspace ``workspace`` of the store at ``url`` (closed by :meth:`close`)."""
        client = open_workspace(url, workspace, agent=agent, create=create, endpoint_url=endpoint_url)
        try:
            return cls(client, owns_client=True, **kw)
        except BaseException:
            client.close()
            raise

    def close(self) -> None:
        """Close the workspace client if this saver opened it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> AgentFSSaver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -------------------------------------------------------------------

    def _thread_path(self, thread: str) -> str:
        return f"{self.directory}/{encode_component(thread, 'thread_id')}"

    def _ns_path(self, thread: str, ns: str) -> str:
        return f"{self._thread_path(thread)}/{ns_dir(ns)}"

    def _record_path(self, thread: str, ns: str, cid: str) -> str:
        return f"{self._ns_path(thread, ns)}/{encode_component(cid, 'checkpoint_id')}.json"

    def _write_path(self, thread: str, ns: str, cid: str, task_id: str) -> str:
        return (f"{self._ns_path(thread, ns)}/writes/{encode_component(cid, 'checkpoint_id')}."
                f"{encode_component(task_id, 'task_id')}.json")

    def _ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            self.client.mkdir(path, parents=True)
            self._dirs.add(path)

    def _listdir(self, path: str) -> list[str]:
        try:
            return self.client.listdir(path)
        except NotFound:
            return []

    def _read(self, path: str) -> bytes | None:
        try:
            return self.client.read_bytes(path)
        except NotFound:
            return None

    # -- values -------------------------------------------------------------------

    def _dump(self, nsp: str, value: Any) -> StoredValue:
        type_, raw = self.serde.dumps_typed(value)
        if len(raw) <= self.inline_limit:
            return StoredValue.inline(type_, raw)
        rel = f"blobs/{sha256_hex(raw)}.bin"
        self._ensure_dir(f"{nsp}/blobs")
        try:
            self._create(f"{nsp}/{rel}", raw)
        except (AlreadyExists, ConflictError):
            pass  # content-addressed: whoever wrote it first wrote these bytes
        return StoredValue(type=type_, blob=rel)

    def _load(self, nsp: str, sv: StoredValue) -> Any:
        if sv.blob is None:
            return self.serde.loads_typed((sv.type, sv.raw_inline()))
        raw = self._read(f"{nsp}/{sv.blob}")
        if raw is None or sha256_hex(raw) != sv.blob.rsplit("/", 1)[-1].removesuffix(".bin"):
            raise CorruptRecord("a blob of a LangGraph checkpoint is missing or damaged", path=f"{nsp}/{sv.blob}")
        return self.serde.loads_typed((sv.type, raw))

    def _create(self, path: str, raw: bytes) -> None:
        """Create ``path`` only if absent (a conditional create in the store)."""
        self._write(path, raw, exclusive=True)

    def _write(self, path: str, raw: bytes, *, exclusive: bool = False) -> None:
        """Write ``path``; if its folder went meanwhile (another process deleted
        the thread), make it again once."""
        try:
            self.client.write_bytes(path, raw, exclusive=exclusive)
        except NotFound:
            folder = path.rpartition("/")[0]
            self._dirs = {d for d in self._dirs if not folder.startswith(d)}
            self._ensure_dir(folder)
            self.client.write_bytes(path, raw, exclusive=exclusive)

    # -- reading -------------------------------------------------------------------

    def _record(self, thread: str, ns: str, cid: str) -> CheckpointRecord | None:
        path = self._record_path(thread, ns, cid)
        raw = self._read(path)
        if raw is None:
            return None
        rec: CheckpointRecord = parse_record(CheckpointRecord, raw, path)
        if (rec.thread_id, rec.checkpoint_ns, rec.checkpoint_id) != (thread, ns, cid):
            log.debug("langgraph: %s is not the record of %s/%s/%s; skipped", path, thread, ns, cid)
            return None
        return rec

    def _ids(self, thread: str, ns: str) -> list[str]:
        """Checkpoint ids of one thread namespace, newest first (file names only)."""
        names = self._listdir(self._ns_path(thread, ns))
        ids = [decode_component(n[: -len(".json")]) for n in names if n.endswith(".json")]
        return sorted(ids, reverse=True)

    def _namespaces(self, thread: str) -> list[str]:
        return [ns for n in self._listdir(self._thread_path(thread)) if (ns := ns_of_dir(n)) is not None]

    def _pending(self, thread: str, ns: str, cid: str) -> list[tuple[str, str, Any]]:
        nsp = self._ns_path(thread, ns)
        prefix = encode_component(cid, "checkpoint_id") + "."
        rows: list[tuple[str, int, str, Any]] = []
        for name in self._listdir(f"{nsp}/writes"):
            if not (name.startswith(prefix) and name.endswith(".json")):
                continue
            path = f"{nsp}/writes/{name}"
            raw = self._read(path)
            if raw is None:
                continue
            rec: WriteRecord = parse_record(WriteRecord, raw, path)
            if rec.checkpoint_id != cid or path != self._write_path(thread, ns, cid, rec.task_id):
                continue  # another checkpoint's, or a conflict copy
            rows += [(rec.task_id, w.idx, w.channel, self._load(nsp, w.value)) for w in rec.writes]
        rows.sort(key=lambda r: (r[0], r[1]))
        return [(t, ch, v) for t, _, ch, v in rows]

    def _decode(self, rec: CheckpointRecord) -> tuple[Checkpoint, CheckpointMetadata]:
        nsp = self._ns_path(rec.thread_id, rec.checkpoint_ns)
        checkpoint = self.serde.loads_typed((rec.checkpoint.type, rec.checkpoint.raw_inline()))
        checkpoint["channel_values"] = {ch: self._load(nsp, sv) for ch, sv in rec.channel_values.items()}
        metadata = self.serde.loads_typed((rec.metadata.type, rec.metadata.raw_inline()))
        return checkpoint, metadata

    def _tuple(self, rec: CheckpointRecord) -> CheckpointTuple:
        checkpoint, metadata = self._decode(rec)

        def conf(cid: str) -> RunnableConfig:
            return {"configurable": {"thread_id": rec.thread_id, "checkpoint_ns": rec.checkpoint_ns,
                                     "checkpoint_id": cid}}

        return CheckpointTuple(conf(rec.checkpoint_id), checkpoint, metadata,
                               conf(rec.parent_checkpoint_id) if rec.parent_checkpoint_id else None,
                               self._pending(rec.thread_id, rec.checkpoint_ns, rec.checkpoint_id))

    def _find(self, config: RunnableConfig) -> CheckpointRecord | None:
        thread, ns, cid = _config_target(config)
        ns = ns or ""
        if cid is not None:
            return self._record(thread, ns, cid)
        for cand in self._ids(thread, ns):
            rec = self._record(thread, ns, cand)
            if rec is not None:
                return rec
        return None

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, else the thread's
        latest in its namespace) with its pending writes; None if there is none."""
        rec = self._find(config)
        return None if rec is None else self._tuple(rec)

    def list(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
             before: RunnableConfig | None = None, limit: int | None = None) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first: of the config's thread (every thread for None),
        its namespace if the config names one, matching every ``filter`` key of
        the metadata, older than ``before``'s checkpoint, at most ``limit``."""
        thread, ns, cid = _config_target(config, need_thread=False)
        _, _, before_id = _config_target(before, need_thread=False)
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InvalidArgument(f"limit must be a non-negative integer, got {limit!r}")
        threads = [thread] if thread else [decode_component(n) for n in self._listdir(self.directory)]
        found: list[tuple[str, str, str]] = []
        for t in threads:
            for n in [ns] if ns is not None else self._namespaces(t):
                found += [(c, t, n) for c in self._ids(t, n)
                          if (cid is None or c == cid) and (before_id is None or c < before_id)]
        found.sort(reverse=True)
        count = 0
        for c, t, n in found:
            if limit is not None and count >= limit:
                return
            rec = self._record(t, n, c)
            if rec is None:
                continue
            if filter:
                _, metadata = self._decode(rec)
                if any(metadata.get(k) != v for k, v in filter.items()):
                    continue
            count += 1
            yield self._tuple(rec)

    # -- writing -------------------------------------------------------------------

    def put(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
            new_versions: ChannelVersions) -> RunnableConfig:
        """Store one checkpoint (create-only: never replaces another writer's), its
        summary, and with ``files=True`` the agentfs checkpoint of the files."""
        thread, ns, parent_id = _config_target(config)
        ns = ns or ""
        cid = checkpoint.get("id") if isinstance(checkpoint, dict) else None
        if not isinstance(cid, str) or not cid:
            raise InvalidArgument(f"a checkpoint needs a non-empty string 'id', got {cid!r}")
        path = self._record_path(thread, ns, cid)
        nsp = self._ns_path(thread, ns)
        self._ensure_dir(nsp)
        rest = {k: v for k, v in checkpoint.items() if k != "channel_values"}
        values = {ch: self._dump(nsp, v) for ch, v in (checkpoint.get("channel_values") or {}).items()}
        md = get_checkpoint_metadata(config, metadata)
        files = FilesRef(checkpoint=files_checkpoint_name(thread, ns, cid), workspace=self.client.name) \
            if self.files else None
        rec = CheckpointRecord(thread_id=thread, checkpoint_ns=ns, checkpoint_id=cid,
                               parent_checkpoint_id=parent_id, agent=self.client.caller.agent,
                               checkpoint=StoredValue.inline(*self.serde.dumps_typed(rest)),
                               channel_values=values, metadata=StoredValue.inline(*self.serde.dumps_typed(md)),
                               metadata_json=_json_view(md), files=files)
        # the record first: only the writer whose record stays writes the summary
        self._store_record(path, rec)
        parent = self._parent_checkpoint(thread, ns, parent_id)
        self._write_summary(rec, checkpoint, parent, sorted(new_versions), [])
        if files is not None:
            try:
                self.client.checkpoint(files.checkpoint, note=f"langgraph thread={thread} ns={ns} "
                                                              f"checkpoint={cid} record={path}")
            except AlreadyExists:
                pass  # a retried put: that checkpoint is ours
        self._last[(thread, ns)] = (cid, rest)
        log.debug("langgraph: stored checkpoint %s of thread %s ns %r", cid, thread, ns)
        return {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": cid}}

    def _store_record(self, path: str, rec: CheckpointRecord) -> None:
        raw = rec.model_dump_json(indent=1).encode()
        try:
            self._create(path, raw)
            return
        except ConflictError as e:  # lost the race in the store: the winner stays
            raise CheckpointConflict("another writer stored this checkpoint first", path=path,
                                     copy=e.copy) from None
        except AlreadyExists:
            pass
        old = self._record(rec.thread_id, rec.checkpoint_ns, rec.checkpoint_id)
        same = old is not None and old.model_dump(exclude={"created", "agent"}) == \
            rec.model_dump(exclude={"created", "agent"})
        if not same:
            raise CheckpointConflict("this checkpoint id is already stored with other content", path=path)

    def _parent_checkpoint(self, thread: str, ns: str, parent_id: str | None) -> dict[str, Any] | None:
        if parent_id is None:
            return None
        last = self._last.get((thread, ns))
        if last is not None and last[0] == parent_id:
            return last[1]
        rec = self._record(thread, ns, parent_id)
        return None if rec is None else dict(self._decode(rec)[0])

    def _write_summary(self, rec: CheckpointRecord, checkpoint: Any, parent: dict[str, Any] | None,
                       changed: Sequence[str], pending: Sequence[tuple[str, str, Any]]) -> None:
        text = summary_markdown(rec, checkpoint, parent, changed, pending)
        path = self._record_path(rec.thread_id, rec.checkpoint_ns, rec.checkpoint_id)[: -len(".json")] + ".md"
        self._write(path, text.encode())

    def put_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                   task_path: str = "") -> None:
        """Store the pending writes of one task for the checkpoint ``config`` names
        (a repeated (task, index) is ignored; special channels such as an interrupt
        replace theirs); an interrupt or error also updates the summary."""
        thread, ns, cid = _config_target(config)
        ns = ns or ""
        if cid is None:
            raise InvalidArgument("put_writes needs the config of a stored checkpoint (no checkpoint_id)")
        path = self._write_path(thread, ns, cid, task_id)
        nsp = self._ns_path(thread, ns)
        special = all(ch in _SPECIAL for ch, _ in writes)
        for _attempt in range(3):
            raw = self._read(path)
            old: WriteRecord | None = parse_record(WriteRecord, raw, path) if raw is not None else None
            by_idx = {w.idx: w for w in old.writes} if old else {}
            before = dict(by_idx)
            for idx, (ch, value) in enumerate(writes):
                i = WRITES_IDX_MAP.get(ch, idx)
                if special or i not in by_idx:
                    by_idx[i] = PendingWrite(idx=i, channel=ch, value=self._dump(nsp, value))
            if old is not None and by_idx == before:
                return
            rec = WriteRecord(checkpoint_id=cid, task_id=task_id, task_path=task_path,
                              writes=[by_idx[i] for i in sorted(by_idx)])
            self._ensure_dir(f"{nsp}/writes")
            try:
                if old is None:
                    self._create(path, rec.model_dump_json(indent=1).encode())
                else:
                    self._write(path, rec.model_dump_json(indent=1).encode())
                break
            except (AlreadyExists, ConflictError) as e:  # another writer of this task: merge again
                log.info("langgraph: writes of task %s raced another writer (%s); merging again", task_id, e)
        else:
            raise CheckpointConflict("the writes of this task keep changing underneath", path=path)
        if any(ch in _SPECIAL for ch, _ in writes):
            self._resummarise(thread, ns, cid)

    def _resummarise(self, thread: str, ns: str, cid: str) -> None:
        rec = self._record(thread, ns, cid)
        if rec is None:
            return
        checkpoint, _ = self._decode(rec)
        parent = self._parent_checkpoint(thread, ns, rec.parent_checkpoint_id)
        changed = sorted(checkpoint.get("updated_channels") or [])
        self._write_summary(rec, checkpoint, parent, changed, self._pending(thread, ns, cid))

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of a thread, and the agentfs
        checkpoints cut for it (their file versions become collectable by gc)."""
        thread, _, _ = _config_target({"configurable": {"thread_id": thread_id}})
        top = self._thread_path(thread)
        prefix = files_checkpoint_prefix(thread)
        for name in sorted(self.client.state_of("head").checkpoints):
            if name.startswith(prefix):  # also those of records a restore took away
                self.client.delete_checkpoint(name)
        if self.client.exists(top):
            self.client.rmtree(top)
        self._dirs = {d for d in self._dirs if d != top and not d.startswith(top + "/")}
        self._last = {k: v for k, v in self._last.items() if k[0] != thread}

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", keep_last: int = 1) -> None:
        """Retention: ``"keep_latest"`` keeps the ``keep_last`` newest checkpoints of
        each namespace of each thread (with their writes) and removes the others,
        their summaries, writes, blobs no kept one uses and their agentfs
        checkpoints; ``"delete"`` deletes the threads.  Unknown threads are skipped."""
        if strategy == "delete":
            for t in thread_ids:
                self.delete_thread(t)
            return
        if strategy != "keep_latest":
            raise InvalidArgument(f"unknown prune strategy {strategy!r} (keep_latest or delete)")
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
            raise InvalidArgument(f"keep_last must be a positive integer, got {keep_last!r}")
        live = set(self.client.state_of("head").checkpoints)
        for t in thread_ids:
            thread, _, _ = _config_target({"configurable": {"thread_id": t}})
            for ns in self._namespaces(thread):
                ids = self._ids(thread, ns)
                if len(ids) > keep_last:
                    self._drop(thread, ns, set(ids[keep_last:]), ids[:keep_last], live)

    def _drop(self, thread: str, ns: str, drop: set[str], kept: Sequence[str], live: set[str]) -> None:
        nsp = self._ns_path(thread, ns)
        used: set[str] = set()
        for cid in kept:
            rec = self._record(thread, ns, cid)
            used |= {sv.blob for sv in (rec.channel_values.values() if rec else []) if sv.blob}
        for name in self._listdir(f"{nsp}/writes"):
            path = f"{nsp}/writes/{name}"
            raw = self._read(path)
            rec_w = parse_record(WriteRecord, raw, path) if raw is not None else None
            if rec_w is not None and rec_w.checkpoint_id in drop:
                self.client.remove(path)
            elif rec_w is not None:
                used |= {w.value.blob for w in rec_w.writes if w.value.blob}
        for cid in sorted(drop):
            base = self._record_path(thread, ns, cid)[: -len(".json")]
            for path in (base + ".json", base + ".md"):
                with contextlib.suppress(NotFound):
                    self.client.remove(path)
            name = files_checkpoint_name(thread, ns, cid)
            if name in live:
                self.client.delete_checkpoint(name)
        for name in self._listdir(f"{nsp}/blobs"):
            if f"blobs/{name}" not in used:
                self.client.remove(f"{nsp}/blobs/{name}")
        log.info("langgraph: pruned %d checkpoints of thread %s ns %r", len(drop), thread, ns)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest", keep_last: int = 1) -> None:
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy, keep_last=keep_last)

    def get_next_version(self, current: str | None, channel: None) -> str:
        """Versions sort as numbers and differ between branches (as InMemorySaver's)."""
        n = 0 if current is None else current if isinstance(current, int) else int(str(current).split(".")[0])
        return f"{n + 1:032}.{random.random():016}"

    # -- files in step -------------------------------------------------------------------

    def files_checkpoint(self, config: RunnableConfig) -> str | None:
        """The agentfs checkpoint cut with the checkpoint ``config`` names (None: none)."""
        rec = self._find(config)
        if rec is None:
            raise NotFound("no such LangGraph checkpoint", path=str(config.get("configurable")))
        return rec.files.checkpoint if rec.files else None

    def restore_files(self, config: RunnableConfig) -> str:
        """Bring the workspace's files back to the step of checkpoint ``config``
        (its ``checkpoint_id``, else the thread's latest), keeping every thread's
        checkpoints as they are now; returns the automatic agentfs checkpoint of
        the files before (restore that one to undo).  Then resume LangGraph from
        that ``config`` (time travel): its nodes see the files they had then.
        Costs one restore commit plus one copy per checkpoint file written since."""
        rec = self._find(config)
        if rec is None:
            raise NotFound("no such LangGraph checkpoint", path=str(config.get("configurable")))
        if rec.files is None:
            raise InvalidArgument("this checkpoint was written without files=True: no files to restore",
                                  path=rec.checkpoint_id)
        if rec.files.workspace != self.client.name:
            raise InvalidArgument(f"this checkpoint's files are in workspace {rec.files.workspace!r}",
                                  path=rec.checkpoint_id)
        keep = self._directory_changes(rec.files.checkpoint)
        undo = self.client.restore(rec.files.checkpoint)
        self._put_back(*keep)
        log.info("langgraph: restored the files of checkpoint %s (thread %s); undo with %s",
                 rec.checkpoint_id, rec.thread_id, undo.name)
        return undo.name

    def _directory_changes(self, target: str) -> tuple[dict[str, bytes | None], builtins.list[str]]:
        """What the restore to ``target`` would change under the directory: the
        current bytes of each file it replaces or removes (None: a folder), and
        the paths it would bring back that are gone now."""
        prefix = self.directory + "/"
        now = {p: e for p, e in self.client.state_of("head").entries.items() if p.startswith(prefix)}
        then = {p: e for p, e in self.client.state_of(target).entries.items() if p.startswith(prefix)}
        keep: dict[str, bytes | None] = {}
        for p, e in now.items():
            old = then.get(p)
            if e.kind == "d":
                if old is None or old.kind != "d":
                    keep[p] = None
            elif e.kind == "f" and (old is None or (old.sha256 or old.etag) != (e.sha256 or e.etag)):
                keep[p] = self.client.read_bytes(p)
        extra = [p for p in then if p not in now]
        return keep, extra

    def _put_back(self, keep: dict[str, bytes | None], extra: builtins.list[str]) -> None:
        for p in sorted(extra, key=lambda q: -q.count("/")):
            st = self.client.stat(p)
            (self.client.rmdir if st.kind == "dir" else self.client.remove)(p)
        for p in sorted(keep, key=lambda q: (q.count("/"), q)):
            data = keep[p]
            if data is None:
                self.client.mkdir(p, parents=True)
            else:
                self.client.write_bytes(p, data)

    # -- async variants (the sync ones in a worker thread) ----------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
                    before: RunnableConfig | None = None, limit: int | None = None) -> AsyncIterator[CheckpointTuple]:
        rows = await asyncio.to_thread(lambda: [*self.list(config, filter=filter, before=before, limit=limit)])
        for row in rows:
            yield row

    async def aput(self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
                   new_versions: ChannelVersions) -> RunnableConfig:
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str,
                          task_path: str = "") -> None:
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def arestore_files(self, config: RunnableConfig) -> str:
        return await asyncio.to_thread(self.restore_files, config)


def _json_view(value: Any) -> Any:
    """``value`` as plain JSON (unknown objects as their repr), for people."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _json_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_view(v) for v in value]
    return repr(value)
