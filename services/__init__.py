"""Every agentmesh service, as the plugins the mesh runs, in start order.

Adding a service is one plugin (a factory, its migrations, its tables) and one
entry here: `agentmesh up`, `agentmesh serve NAME` and the tests all read this list.
"""

from agentmesh.mesh import ServicePlugin
from services import files, guardrails, providers, reach, registry, runner, traces, triggers

PLUGINS: tuple[ServicePlugin, ...] = (
    registry.plugin,
    providers.plugin,
    files.plugin,
    runner.plugin,
    reach.plugin,
    triggers.plugin,
    guardrails.plugin,
    traces.plugin,
)


def plugins_named(*names: str) -> tuple[ServicePlugin, ...]:
    """The plugins of these services, in start order; ValueError for an unknown name."""
    known = {plugin.name for plugin in PLUGINS}
    if unknown := set(names) - known:
        raise ValueError(f"unknown services: {', '.join(sorted(unknown))}")
    return tuple(plugin for plugin in PLUGINS if plugin.name in names)
