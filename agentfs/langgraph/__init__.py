"""LangGraph checkpoints stored in an agentfs workspace, in step with its files.

``from agentfs.langgraph import AgentFSSaver`` needs the optional extra
``pip install 'agentfs[langgraph]'``; see :mod:`agentfs.langgraph.saver`.
"""

from __future__ import annotations

try:
    import langgraph.checkpoint.base  # noqa: F401  (the optional dependency)
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("agentfs.langgraph needs LangGraph: pip install 'agentfs[langgraph]'") from e

from agentfs.langgraph.saver import DEFAULT_DIRECTORY, AgentFSSaver

__all__ = ["DEFAULT_DIRECTORY", "AgentFSSaver"]
