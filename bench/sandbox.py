"""What running user code in the sandbox costs over starting Python at all, in one run.

The floor is a bare `python -c 'print(1)'` subprocess (the sandbox's own interpreter,
started the same asyncio way). Measured against it: a trivial code tool call through
`run_code` (bubblewrap, namespaces, mounts, our init, limits, the JSON round trip) and
a trivial command through `run_command`. Prints p50/p99 and their ratios to the floor;
this is what decides whether a pool of warm sandboxes would be worth its complexity.

    .venv/bin/python bench/sandbox.py [--calls 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable

from agentmesh import sandbox

TRIVIAL_TOOL = "def main(x):\n    return {'doubled': x * 2}\n"


async def measure(call: Callable[[], Awaitable[object]], calls: int) -> dict[str, float]:
    for _ in range(10):  # warm the page cache and the event loop
        await call()
    latencies = []
    for _ in range(calls):
        started = time.perf_counter()
        await call()
        latencies.append(time.perf_counter() - started)
    latencies.sort()
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


async def main(calls: int) -> None:
    python = sandbox._python_path()

    async def bare_python() -> None:
        process = await asyncio.create_subprocess_exec(
            python, "-c", "print(1)", stdout=asyncio.subprocess.PIPE
        )
        await process.communicate()

    async def code_tool() -> None:
        assert await sandbox.run_code(TRIVIAL_TOOL, "main", {"x": 21}) == {"doubled": 42}

    workspace = sandbox.create_workspace()

    async def command() -> None:
        result = await sandbox.run_command(
            ["true"], workspace=workspace, blocked_paths=[], read_only=False
        )
        assert result.exit_code == 0

    try:
        floor = await measure(bare_python, calls)
        results = {
            "bare python -c (floor)": floor,
            "run_code, trivial tool": await measure(code_tool, calls),
            "run_command ['true']": await measure(command, calls),
        }
    finally:
        sandbox.remove_workspace(workspace)

    print(f"{calls} sequential calls each; interpreter {python}")
    print(f"{'':26} {'p50 ms':>8} {'p99 ms':>8} {'p50 x':>7} {'p99 x':>7}")
    for name, numbers in results.items():
        p50, p99 = numbers["p50_ms"], numbers["p99_ms"]
        print(
            f"{name:26} {p50:8.1f} {p99:8.1f}"
            f" {p50 / floor['p50_ms']:7.2f} {p99 / floor['p99_ms']:7.2f}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    asyncio.run(main(parser.parse_args().calls))
