"""agentfs: the file-state and checkpoint-state layer for AI agents.

Mount a workspace with ``agentfs mount``, or use it from Python without FUSE::

    import agentfs
    with agentfs.open_workspace("s3://bucket", "research") as ws:
        ws.write_bytes("report.md", b"# findings\\n")
"""

from agentfs import errors
from agentfs.api import FileStat, WorkspaceClient, checkpoint, open_workspace
from agentfs.locks import FileLock, lock
from agentfs.workspace import Workspace

__all__ = ["FileLock", "FileStat", "Workspace", "WorkspaceClient", "checkpoint", "errors", "lock",
           "open_workspace"]
__version__ = "0.1.0"
