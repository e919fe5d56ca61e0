"""Regular expressions from users: RE2 (linear time), compiled quietly and bounded.

Never Python's `re` on a user's pattern: `(a+)+$` would take exponential time.
RE2 by default also writes a failing pattern to stderr, raw, where a newline in
it would forge a log line; here it stays silent and the error quotes it safely.
"""

from __future__ import annotations

import re2

from agentmesh.errors import quoted

# RE2's memory budget for one compiled pattern; a bigger one fails to compile.
_MAX_MEMORY = 8 << 20


def compile_pattern(pattern: str) -> re2._Regexp:
    """The compiled pattern; ValueError with a short, escaped reason if it is not valid."""
    options = re2.Options()
    options.log_errors = False
    options.max_mem = _MAX_MEMORY
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        detail = error.args[0] if error.args else b""
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        # RE2 ends its reason with the pattern; the caller quotes it capped instead.
        reason = str(detail).split(":", 1)[0]
        raise ValueError(f"not a valid RE2 pattern ({reason}): {quoted(pattern, 80)}") from None
