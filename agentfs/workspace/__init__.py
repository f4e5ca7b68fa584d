"""The workspace: every file operation on one workspace, with or without FUSE.

Its modules, each layer importing only those before it:

- :mod:`~agentfs.workspace.types`: attributes, open files, the namespace lock, limits;
- :mod:`~agentfs.workspace.base`: state, journal, commits, path resolution;
- :mod:`~agentfs.workspace.files` and :mod:`~agentfs.workspace.tree`: the
  operations on open files and on the tree;
- :mod:`~agentfs.workspace.core`: :class:`Workspace`, the whole.
"""

from agentfs.names import MAX_NAME, check_name, check_workspace_name
from agentfs.workspace.core import Workspace
from agentfs.workspace.types import MAX_XATTR_VALUE, Attr, OpenFile

__all__ = [
    "MAX_NAME",
    "MAX_XATTR_VALUE",
    "Attr",
    "OpenFile",
    "Workspace",
    "check_name",
    "check_workspace_name",
]
