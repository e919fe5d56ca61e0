"""How a serving process logs: one line per record, whoever wrote the record.

agentmesh's own lines quote user text (`errors.quoted`), but libraries log too
(the A2A SDK names a JSON-RPC request's id, uvicorn a failing request) and quote
nothing. The formatter escapes every control character of a record's message,
so no client's text can start a line of its own or send a terminal escape; what
stays multi-line (a traceback, whose last line may quote a client) is indented,
so only a record's own first line starts at the margin.
"""

from __future__ import annotations

import logging
import re
import sys

# Every control character but tab (C0, DEL, C1) and Unicode's line separators.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


class OneLineFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _CONTROL.sub(_escaped, record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = _CONTROL_BUT_NEWLINE.sub(_escaped, super().format(record))
        return text.replace("\n", "\n    ")


def configure(level: str | int) -> None:
    """The process's logging: to stderr, each record on a line of its own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # Their INFO lines carry full URLs, which may hold a webhook's or a tool's token.
    for noisy in ("httpx2", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
