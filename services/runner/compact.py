"""History compaction: a conversation past its token budget has its older turns
summarised through the agent's own model before the next run, so a long
conversation never fails on the model's context window.

When a run's SDK first reads the conversation (the Session seam; see session.py)
and the history with the new input is estimated above the budget, the newest
turns that fit in half of it stay as they are; everything before them is written
out as a transcript and summarised in one extra model call, billed to the run.
The summary (a system message) takes the older items' place in one transaction,
and the conversation's compact_time is set. Cuts fall before a user message, so
a tool call is never parted from its output.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agents import Agent, Model
from agents.items import ModelResponse
from agents.models.interface import ModelTracing

from services.runner import records
from services.runner.store import RunnerStore

log = logging.getLogger("agentmesh.runner")

SUMMARY_PREFIX = "Summary of the earlier conversation:\n"
_INSTRUCTIONS = (
    "You condense conversations. Summarise the transcript you are given for the "
    "assistant who continues the conversation: keep every fact, name, number, "
    "decision, preference and open question; drop pleasantries. Write plain prose, "
    "in the conversation's language, without a preamble."
)
# Characters per token, for an estimate that needs no tokenizer of the model's.
_CHARS_PER_TOKEN = 4

Charge = Callable[[Any, ModelResponse, bool], Awaitable[None]]


def estimate_tokens(item: Any) -> int:
    text = item if isinstance(item, str) else json.dumps(item, separators=(",", ":"))
    return len(text) // _CHARS_PER_TOKEN + 1


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def transcript(items: list[dict]) -> str:
    """The items as a person would read them: who said what, which tool returned what."""
    lines = []
    for item in items:
        kind = item.get("type", "message")
        if kind == "message" or "role" in item:
            if text := _text(item.get("content")):
                lines.append(f"{item.get('role', 'user')}: {text}")
        elif kind == "function_call":
            lines.append(f"assistant called {item.get('name')}({item.get('arguments', '')})")
        elif kind == "function_call_output":
            lines.append(f"tool returned: {_text(item.get('output')) or item.get('output')}")
    return "\n".join(lines)


def _starts_turn(item: dict) -> bool:
    return item.get("role") == "user" and item.get("type", "message") == "message"


class Compactor:
    def __init__(self, store: RunnerStore, budget_tokens: int):
        self._store = store
        self._budget = budget_tokens

    async def compact(
        self,
        run: records.Run,
        agent: Agent,
        charge: Charge,
        history: list[tuple[int, str, dict]],
    ) -> list[dict]:
        """The history the run starts from: `history`'s items, or, if they are over
        budget, a summary of the older ones and the newest as they are (written back)."""
        items = [item for _, _, item in history]
        if self._budget <= 0:
            return items
        sizes = [estimate_tokens(item) for item in items]
        if sum(sizes) + estimate_tokens(run.input) <= self._budget:
            return items
        keep_from, kept = None, 0
        for index in range(len(items) - 1, 0, -1):
            kept += sizes[index]
            if _starts_turn(items[index]):
                if kept > self._budget // 2 and keep_from is not None:
                    break
                keep_from = index
        if keep_from is None:  # one turn, however long: nothing older to summarise
            return items
        summary = {
            "role": "system",
            "content": SUMMARY_PREFIX + await self._summarise(agent, items[:keep_from], charge),
        }
        last_seq, last_run, _ = history[keep_from - 1]
        await self._store.compact(run.conversation_id, last_seq, summary, last_run)
        log.info(
            "compacted conversations/%s: %d items summarised for runs/%s",
            run.conversation_id,
            keep_from,
            run.id,
        )
        return [summary, *items[keep_from:]]

    async def _summarise(self, agent: Agent, items: list[dict], charge: Charge) -> str:
        model = agent.model
        assert isinstance(model, Model), "agents are built with their model objects"
        response = await model.get_response(
            system_instructions=_INSTRUCTIONS,
            input=[{"role": "user", "content": transcript(items)}],
            # The agent's settings (its provider may need them), minus any tool choice.
            model_settings=dataclasses.replace(
                agent.model_settings, tool_choice=None, parallel_tool_calls=None
            ),
            tools=[],
            output_schema=None,
            handoffs=[],
            tracing=ModelTracing.DISABLED,
            previous_response_id=None,
            conversation_id=None,
            prompt=None,
        )
        await charge(agent, response, False)
        return "".join(
            str(getattr(part, "text", "") or "")
            for output in response.output
            for part in getattr(output, "content", None) or []
        ).strip()
