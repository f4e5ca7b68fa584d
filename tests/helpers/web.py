"""A workspace prepared as an agent leaves it for review, shared by the web page tests.
"""

from __future__ import annotations

import agentfs

__all__ = ["EVIL", "NEW", "OLD", "prepare"]


OLD = b"# Q4 report\n\nRevenue grew 4%.\n"


NEW = b"# Q4 report\n\nRevenue grew 40%.\n"


EVIL = (b"# Hello\n\n<script>alert('md')</script>\n\n<img src=x onerror=\"alert('img')\">\n\n"
        b"[click](javascript:alert('link')) and <a href=\"javascript:alert(2)\" onclick=\"alert(3)\">raw</a>\n\n"
        b"![pic](javascript:alert('src'))\n")


def prepare(url: str, *, small: bool = False) -> None:
    """What an agent leaves: report.md in review at checkpoint v1, then edited
    (``small``: that alone, for the slower S3 store)."""
    with agentfs.open_workspace(url, "ws", agent="writer") as c:
        c.write_bytes("report.md", OLD)
        if small:
            c.set_state("report.md", status="review")
        else:
            c.mkdir("notes")
            c.write_bytes("notes/evil.md", EVIL)
            c.write_bytes("data.bin", bytes(range(256)) * 4)
            c.set_state("report.md", status="review", owner="writer", task="q4", labels=["finance"])
        c.checkpoint("v1", note="first draft")
        c.write_bytes("report.md", NEW)
