"""What the streaming guardrail gate adds to the time to first token, measured in one run.

The gate (services/runner/guarding.py) holds back the trailing window of streamed
text that an output guardrail might still trip on. Two measures:

1. Through the mesh (StreamRun over gRPC, the stand-in model server answering at
   once with a 600-character answer in word-sized deltas): time to the first
   text delta and to the end of the run, p50, for an agent without output
   guardrails (the floor), with a regex guardrail, and with builtin ones (PII,
   secrets, blocked terms). The model is instant, so this is the gate's CPU cost.
2. At a model's pace (one word-sized token every 20 ms, ~50 tokens/s): how many
   tokens the gate holds before the first one goes out, and so the time to first
   token it adds; and its CPU per delta. Computed by feeding the gate the same
   deltas (no mesh), since the stand-in has no per-token pacing.

    .venv/bin/python bench/guardrail_gate.py [--runs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from run_overhead import KEY, user_on_model  # noqa: E402

from agentmesh.client import Client
from agentmesh.config import Settings
from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.gen.runner.v1 import runner_pb2 as rn
from agentmesh.mesh import Mesh
from agentmesh.model_server import DEFAULT_MODEL, ModelServer, Reply
from services import PLUGINS
from services.runner.guarding import OutputGate

ANSWER = (
    "Your order shipped on Monday and should arrive within three business days. "
    "If it does not, reply here and we will look into it with the carrier. "
) * 4
TOKEN_SECONDS = 0.020
GUARDRAILS: dict[str, list[g.Guardrail]] = {
    "none": [],
    "regex": [
        g.Guardrail(
            name="no-passwords",
            regex=g.RegexCheck(
                pattern=r"(?i)\bpassword\s?[:=]\s?\S{4}", action=g.RegexCheck.ACTION_BLOCK
            ),
        )
    ],
    "builtin": [
        g.Guardrail(name="pii", builtin=g.BuiltinCheck(pii=g.PiiDetector())),
        g.Guardrail(name="secrets", builtin=g.BuiltinCheck(secrets=g.SecretsDetector())),
        g.Guardrail(
            name="terms",
            builtin=g.BuiltinCheck(blocked_terms=g.BlockedTerms(terms=["confidential", "nda"])),
        ),
    ],
}


async def tenant(mesh: Mesh, data_dir: Path, model_url: str) -> Client:
    client = await user_on_model(mesh, data_dir, model_url)
    for case, guardrails in GUARDRAILS.items():
        await client.registry.CreateAgent(
            r.CreateAgentRequest(
                agent=r.Agent(display_name=case, model=DEFAULT_MODEL, output_guardrails=guardrails),
                agent_id=case,
            )
        )
    return client


async def stream_once(client: Client, model: ModelServer, agent: str) -> tuple[float, float]:
    model.enqueue(Reply(text=ANSWER))
    started = time.perf_counter()
    first = 0.0
    text = []
    async for event in client.runner.StreamRun(rn.RunAgentRequest(agent=agent, input="where?")):
        if event.HasField("text_delta"):
            first = first or time.perf_counter() - started
            text.append(event.text_delta.delta)
        if event.HasField("run_finished"):
            assert event.run_finished.state == rn.Run.STATE_SUCCEEDED, event.run_finished
    assert "".join(text) == ANSWER
    return first, time.perf_counter() - started


async def through_the_mesh(runs: int) -> dict[str, tuple[float, float]]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        settings = Settings(
            data_dir=data_dir, port=0, openai_api_key="", outbound_allow=["127.0.0.1"]
        )
        async with ModelServer(api_key=KEY) as model, Mesh(settings, PLUGINS) as mesh:
            client = await tenant(mesh, data_dir, model.base_url)
            for case in GUARDRAILS:
                for _ in range(5):  # warm up caches and channels
                    await stream_once(client, model, f"agents/{case}")
            samples: dict[str, list[tuple[float, float]]] = {case: [] for case in GUARDRAILS}
            for _ in range(runs):  # interleaved, so drift hits every case alike
                for case in GUARDRAILS:
                    samples[case].append(await stream_once(client, model, f"agents/{case}"))
            await client.close()
        for case, values in samples.items():
            results[case] = (
                statistics.median(v[0] for v in values) * 1000,
                statistics.median(v[1] for v in values) * 1000,
            )
    return results


def at_model_pace(guardrails: list[g.Guardrail]) -> tuple[int, float]:
    """Tokens held before the first goes out, and the gate's CPU per delta in µs."""
    tokens = re.findall(r"\S+\s*", ANSWER)
    definition = r.Agent(output_guardrails=guardrails)
    gate = OutputGate({"a": definition})
    first = None
    started = time.perf_counter()
    for index, token in enumerate(tokens):
        out = gate.feed("a", token) if gate.active else token
        if out and first is None:
            first = index + 1
    gate.end_message()
    cpu = (time.perf_counter() - started) / len(tokens) * 1e6
    return first or len(tokens), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("agentmesh").setLevel(logging.WARNING)

    mesh = asyncio.run(through_the_mesh(args.runs))
    floor_first, floor_total = mesh["none"]
    print(f"StreamRun, instant model, {len(ANSWER)}-char answer, p50 of {args.runs} runs")
    print(f"{'guardrails':<10} {'first text':>11} {'ratio':>6} {'whole run':>10} {'ratio':>6}")
    for case, (first, total) in mesh.items():
        print(
            f"{case:<10} {first:>9.2f}ms {first / floor_first:>5.2f}x "
            f"{total:>8.2f}ms {total / floor_total:>5.2f}x"
        )
    print(f"\nat a model's pace ({TOKEN_SECONDS * 1000:.0f} ms per word-sized token)")
    print(
        f"{'guardrails':<10} {'held tokens':>11} {'first token':>12} {'ratio':>6} {'cpu/delta':>10}"
    )
    floor_tokens, _ = at_model_pace([])
    for case, guardrails in GUARDRAILS.items():
        tokens, cpu = at_model_pace(guardrails)
        ttft = tokens * TOKEN_SECONDS * 1000
        print(
            f"{case:<10} {tokens:>11} {ttft:>10.0f}ms {tokens / floor_tokens:>5.1f}x {cpu:>8.1f}µs"
        )


if __name__ == "__main__":
    main()
