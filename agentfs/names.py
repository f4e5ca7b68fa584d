"""Valid names: one path component, and a workspace name.

Error contract: :class:`~agentfs.errors.BadName` (``EINVAL``) or
:class:`~agentfs.errors.NameTooLong` (``ENAMETOOLONG``).
"""

from __future__ import annotations

from agentfs.errors import BadName, NameTooLong
from agentfs.journal import META

__all__ = ["MAX_NAME", "check_name", "check_workspace_name"]

MAX_NAME = 255


def check_name(name: str) -> None:
    """Raise unless ``name`` can be one path component."""
    if not name or name in (".", ".."):
        raise BadName("invalid name", path=name)
    if "/" in name or "\0" in name:
        raise BadName("name contains '/' or NUL", path=name)
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadName("name is not valid UTF-8", path=repr(name)) from None
    if len(raw) > MAX_NAME:
        raise NameTooLong("name longer than 255 bytes", path=name[:40] + "...")


def check_workspace_name(name: str) -> None:
    """A workspace name is a valid name that is not agentfs's own folder."""
    check_name(name)
    if name == META or name.startswith(".agentfs"):
        raise BadName("reserved workspace name", path=name)
