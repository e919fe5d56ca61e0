"""A serving process's log lines cannot be forged by what a client sends, whichever
library logs it (agentmesh/logs.py)."""

from __future__ import annotations

import io
import logging

from agentmesh.logs import OneLineFormatter

FORGED = "1\n2026-11-28 06:00:00,000 INFO agentmesh.rpc FORGED \x1b[31mred\r\x85\u2028"


def _logged(*args, **kwargs) -> str:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("a2a.server.routes.jsonrpc_dispatcher")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning(*args, **kwargs)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    return out.getvalue()


def test_a_librarys_line_quoting_a_client_stays_one_line():
    text = _logged("Request Error (ID: %s): Code=-32601", FORGED)
    assert text.count("\n") == 1  # the handler's own line end
    assert "\x1b" not in text and "\r" not in text and "\x85" not in text
    assert "(ID: 1\\n2026-11-28 06:00:00,000 INFO agentmesh.rpc FORGED \\x1b[31mred" in text


def test_a_traceback_quoting_a_client_cannot_start_a_line_of_its_own():
    try:
        raise ValueError(FORGED)
    except ValueError:
        text = _logged("Unhandled exception", exc_info=True)
    first, *rest = text.rstrip("\n").split("\n")
    assert first == "WARNING a2a.server.routes.jsonrpc_dispatcher Unhandled exception"
    assert rest and all(line.startswith("    ") for line in rest)
    assert "Traceback (most recent call last):" in rest[0]
    assert "\x1b" not in text and "\r" not in text
