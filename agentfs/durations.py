"""Durations as people write them: ``90``, ``90s``, ``30m``, ``1h``, ``2d``, ``1w``, ``1h30m``.

One grammar for every duration agentfs reads (a state TTL, a retention
window, ``--since``); each caller reports a bad one in its own terms.
"""

from __future__ import annotations

import re

__all__ = ["UNITS", "parse_seconds"]

#: seconds per unit
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])\s*")


def parse_seconds(text: str) -> float | None:
    """Seconds of a duration (a bare number is seconds; units may be combined,
    case and blanks are ignored), or None when ``text`` is not one."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return float(s)
    pos, secs = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            return None
        secs += float(m.group(1)) * UNITS[m.group(2)]
        pos = m.end()
    return secs if s and pos == len(s) else None
