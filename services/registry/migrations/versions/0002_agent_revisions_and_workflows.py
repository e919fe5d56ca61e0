"""Agents keyed per user, with revisions and typed tools and guardrails; workflows.

Revision ID: 0002
Revises: 0001

Agent ids become unique per user, not globally (two tenants may both have
agents/triage), so whatever points at an agent carries (user_id, agent_id) and
composite foreign keys hold every reference in the database. Definitions move
from agents.spec (proto JSON, camelCase) into immutable revisions (proto JSON,
snake_case field names), tools and guardrails into their typed oneofs:
the untyped `type` + `params` and `implementation` + `config` become
`function`, `agent`, `file_search`, ... and `regex`, `builtin`, `code`, ...

Function tools had no implementation before; they become function tools
without one, which buf.validate names (tools[i].function.implementation) on the
agent's next update. Downgrading turns the typed forms back and drops
revisions and workflows; it fails if two users have agents of one id.

The changed tables are read, dropped and built anew: SQLite cannot change keys
in place, and Postgres would keep the old constraint names.
"""

import uuid
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

_AGENT_KEYS = {
    "displayName": "display_name",
    "handoffDescription": "handoff_description",
    "modelSettings": "model_settings",
    "inputGuardrails": "input_guardrails",
    "outputGuardrails": "output_guardrails",
    "outputType": "output_type",
}
_MODEL_SETTINGS_KEYS = {
    "topP": "top_p",
    "maxTokens": "max_tokens",
    "additionalParams": "additional_params",
}
_TOOL_KINDS = {
    "TOOL_TYPE_FUNCTION": "function",
    "TOOL_TYPE_AGENT": "agent",
    "TOOL_TYPE_FILE_SEARCH": "file_search",
    "TOOL_TYPE_WEB_SEARCH": "web_search",
    "TOOL_TYPE_COMPUTER": "computer",
    "TOOL_TYPE_MCP": "mcp",
}
_CHECKS = {
    "GUARDRAIL_IMPLEMENTATION_REGEX": "regex",
    "GUARDRAIL_IMPLEMENTATION_BUILTIN": "builtin",
    "GUARDRAIL_IMPLEMENTATION_CODE": "code",
    "GUARDRAIL_IMPLEMENTATION_ENDPOINT": "endpoint",
    "GUARDRAIL_IMPLEMENTATION_AGENT": "agent",
}
_DETECTORS = {"pii", "secrets", "prompt_injection", "max_length", "blocked_terms", "json_schema"}


def _time(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _renamed(values: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    return {names.get(key, key): value for key, value in values.items()}


def _typed_tool(tool: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = {key: tool[key] for key in ("name", "description") if key in tool}
    kind = _TOOL_KINDS.get(tool.get("type", ""), "function")
    params = tool.get("params", {})
    settings: dict[str, Any] = {}
    if kind == "function" and "parameters" in tool:
        settings = {"parameters": tool["parameters"]}
    elif kind == "agent":
        settings = {"agent": params.get("agent", "")}
    elif kind == "file_search":
        settings = {
            "vector_stores": [f"vectorStores/{i}" for i in params.get("vector_store_ids", [])]
        }
        if "max_num_results" in params:
            settings["max_results"] = params["max_num_results"]
    elif kind == "mcp":
        settings = {"url": params.get("server_url", "")}
    typed[kind] = settings
    return typed


def _typed_guardrail(guardrail: dict[str, Any]) -> dict[str, Any]:
    typed: dict[str, Any] = {
        key: guardrail[key] for key in ("name", "description") if key in guardrail
    }
    check = _CHECKS.get(guardrail.get("implementation", ""), "regex")
    config = guardrail.get("config", {})
    settings: dict[str, Any] = {}
    if check == "regex":
        action = "ACTION_ALLOW" if config.get("action") == "allow" else "ACTION_BLOCK"
        settings = {"pattern": config.get("pattern", ""), "action": action}
    elif check == "builtin" and config.get("check") in _DETECTORS:
        settings = {config["check"]: {}}
    elif check == "code":
        settings = {"source": config.get("code", "")}
    elif check in ("endpoint", "agent"):
        key = "url" if check == "endpoint" else "agent"
        settings = {key: config.get(key, "")}
    typed[check] = settings
    return typed


def _definition(spec: dict[str, Any]) -> dict[str, Any]:
    definition = _renamed(spec, _AGENT_KEYS)
    if "model_settings" in definition:
        definition["model_settings"] = _renamed(definition["model_settings"], _MODEL_SETTINGS_KEYS)
    definition["tools"] = [_typed_tool(tool) for tool in definition.get("tools", [])]
    for side in ("input_guardrails", "output_guardrails"):
        definition[side] = [_typed_guardrail(g) for g in definition.get(side, [])]
    return {key: value for key, value in definition.items() if value != []}


def _agent_targets(definition: dict[str, Any]) -> set[str]:
    """Ids of the agents a definition uses as tools or guardrails."""
    names = [
        tool["agent"].get("agent", "") for tool in definition.get("tools", []) if "agent" in tool
    ]
    for side in ("input_guardrails", "output_guardrails"):
        names += [g["agent"].get("agent", "") for g in definition.get(side, []) if "agent" in g]
    return {name.removeprefix("agents/") for name in names if name}


def _old_spec(definition: dict[str, Any]) -> dict[str, Any]:
    """The 0001 form of a definition, for downgrading."""
    spec = _renamed(definition, {new: old for old, new in _AGENT_KEYS.items()})
    if "modelSettings" in spec:
        spec["modelSettings"] = _renamed(
            spec["modelSettings"], {new: old for old, new in _MODEL_SETTINGS_KEYS.items()}
        )
    tool_types = {kind: name for name, kind in _TOOL_KINDS.items()}
    tools = []
    for tool in spec.get("tools", []):
        old = {key: tool[key] for key in ("name", "description") if key in tool}
        kind = next((kind for kind in tool_types if kind in tool), "function")
        old["type"] = tool_types[kind]
        settings = tool.get(kind, {})
        if kind == "function" and "parameters" in settings:
            old["parameters"] = settings["parameters"]
        elif kind == "agent":
            old["params"] = {"agent": settings.get("agent", "")}
        elif kind == "mcp":
            old["params"] = {"server_url": settings.get("url", "")}
        tools.append(old)
    if tools:
        spec["tools"] = tools
    implementations = {check: name for name, check in _CHECKS.items()}
    for side in ("inputGuardrails", "outputGuardrails"):
        guardrails = []
        for guardrail in spec.get(side, []):
            old = {key: guardrail[key] for key in ("name", "description") if key in guardrail}
            check = next((check for check in implementations if check in guardrail), "regex")
            old["implementation"] = implementations[check]
            settings = guardrail.get(check, {})
            if check == "regex":
                action = "allow" if settings.get("action") == "ACTION_ALLOW" else "block"
                old["config"] = {"pattern": settings.get("pattern", ""), "action": action}
            elif check == "code":
                old["config"] = {"code": settings.get("source", "")}
            elif check in ("endpoint", "agent"):
                key = "url" if check == "endpoint" else "agent"
                old["config"] = {key: settings.get(key, "")}
            guardrails.append(old)
        if guardrails:
            spec[side] = guardrails
    return spec


# The tables as 0001 made them, for reading before an upgrade and writing after a downgrade.
_old_agents = sa.table(
    "agents",
    sa.column("seq", sa.Integer),
    sa.column("id", sa.String),
    sa.column("user_id", sa.String),
    sa.column("spec", sa.JSON),
    sa.column("etag", sa.String),
    sa.column("create_time", sa.DateTime(timezone=True)),
    sa.column("update_time", sa.DateTime(timezone=True)),
)
_old_handoffs = sa.table(
    "handoffs",
    sa.column("agent_id", sa.String),
    sa.column("target_id", sa.String),
    sa.column("position", sa.Integer),
)
_contexts = sa.table(
    "contexts",
    sa.column("seq", sa.Integer),
    sa.column("id", sa.String),
    sa.column("user_id", sa.String),
    sa.column("agent_id", sa.String),
    sa.column("display_name", sa.String),
    sa.column("values", sa.JSON),
    sa.column("is_default", sa.Boolean),
    sa.column("create_time", sa.DateTime(timezone=True)),
)
_agents = sa.table(
    "agents",
    sa.column("seq", sa.Integer),
    sa.column("user_id", sa.String),
    sa.column("id", sa.String),
    sa.column("etag", sa.String),
    sa.column("revision_id", sa.String),
    sa.column("create_time", sa.DateTime(timezone=True)),
    sa.column("update_time", sa.DateTime(timezone=True)),
)
_revisions = sa.table(
    "agent_revisions",
    sa.column("user_id", sa.String),
    sa.column("agent_id", sa.String),
    sa.column("id", sa.String),
    sa.column("definition", sa.JSON),
    sa.column("handoffs", sa.JSON),
    sa.column("etag", sa.String),
    sa.column("create_time", sa.DateTime(timezone=True)),
)
_references = sa.table(
    "agent_references",
    sa.column("user_id", sa.String),
    sa.column("agent_id", sa.String),
    sa.column("target_id", sa.String),
)
_CONTEXT_COLUMNS = ("id", "agent_id", "display_name", "values", "is_default", "create_time")


def _agent_key(*columns: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["user_id", *columns], ["agents.user_id", "agents.id"], ondelete=ondelete
    )


def _create_agent_tables() -> None:
    op.create_table(
        "agents",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        sa.Column("revision_id", sa.String(64), nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.UniqueConstraint("user_id", "id", name="uq_agents_user_id_id"),
    )
    op.create_table(
        "agent_revisions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("handoffs", sa.JSON, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        _time("create_time"),
        _agent_key("agent_id", ondelete="CASCADE"),
        sa.UniqueConstraint(
            "user_id", "agent_id", "id", name="uq_agent_revisions_user_id_agent_id_id"
        ),
    )
    op.create_table(
        "agent_references",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("target_id", sa.String(64), primary_key=True),
        _agent_key("agent_id", ondelete="CASCADE"),
        _agent_key("target_id"),
    )
    op.create_index(
        "ix_agent_references_user_id_target_id", "agent_references", ["user_id", "target_id"]
    )
    op.create_table(
        "contexts",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("values", sa.JSON, nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False),
        _time("create_time"),
        _agent_key("agent_id", ondelete="CASCADE"),
    )
    op.create_index("ix_contexts_user_id_agent_id", "contexts", ["user_id", "agent_id"])
    op.create_table(
        "workflows",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "user_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        _time("create_time"),
        _time("update_time"),
        sa.UniqueConstraint("user_id", "id", name="uq_workflows_user_id_id"),
    )
    op.create_table(
        "workflow_agents",
        sa.Column("user_id", sa.String(64), primary_key=True),
        sa.Column("workflow_id", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.ForeignKeyConstraint(
            ["user_id", "workflow_id"], ["workflows.user_id", "workflows.id"], ondelete="CASCADE"
        ),
        _agent_key("agent_id"),
    )
    op.create_index(
        "ix_workflow_agents_user_id_agent_id", "workflow_agents", ["user_id", "agent_id"]
    )


def _create_0001_agent_tables() -> None:
    op.create_table(
        "agents",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "user_id", sa.String(64), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("etag", sa.String(64), nullable=False),
        _time("create_time"),
        _time("update_time"),
    )
    op.create_index("ix_agents_user_id", "agents", ["user_id"])
    op.create_table(
        "handoffs",
        sa.Column(
            "agent_id",
            sa.String(64),
            sa.ForeignKey("agents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("target_id", sa.String(64), sa.ForeignKey("agents.id"), primary_key=True),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_index("ix_handoffs_target_id", "handoffs", ["target_id"])
    op.create_table(
        "contexts",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column(
            "agent_id",
            sa.String(64),
            sa.ForeignKey("agents.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("values", sa.JSON, nullable=False),
        sa.Column("is_default", sa.Boolean, nullable=False),
        _time("create_time"),
    )
    op.create_index("ix_contexts_agent_id", "contexts", ["agent_id"])


def upgrade() -> None:
    conn = op.get_bind()
    agents = conn.execute(sa.select(_old_agents).order_by(_old_agents.c.seq)).all()
    handoffs: dict[str, list[str]] = {}
    for row in conn.execute(sa.select(_old_handoffs).order_by(_old_handoffs.c.position)):
        handoffs.setdefault(row.agent_id, []).append(row.target_id)
    columns = [_contexts.c[name] for name in _CONTEXT_COLUMNS]
    contexts = conn.execute(sa.select(*columns).order_by(_contexts.c.seq)).all()
    for table in ("contexts", "handoffs", "agents"):
        op.drop_table(table)
    _create_agent_tables()

    owners = {agent.id: agent.user_id for agent in agents}
    for agent in agents:
        revision_id = uuid.uuid4().hex[:12]
        definition = _definition(agent.spec)
        targets = handoffs.get(agent.id, [])
        conn.execute(
            sa.insert(_agents).values(
                user_id=agent.user_id,
                id=agent.id,
                etag=agent.etag,
                revision_id=revision_id,
                create_time=agent.create_time,
                update_time=agent.update_time,
            )
        )
        conn.execute(
            sa.insert(_revisions).values(
                user_id=agent.user_id,
                agent_id=agent.id,
                id=revision_id,
                definition=definition,
                handoffs=targets,
                etag=agent.etag,
                create_time=agent.update_time,
            )
        )
    for agent in agents:
        used = set(handoffs.get(agent.id, [])) | _agent_targets(_definition(agent.spec))
        for target in sorted(t for t in used if owners.get(t) == agent.user_id):
            conn.execute(
                sa.insert(_references).values(
                    user_id=agent.user_id, agent_id=agent.id, target_id=target
                )
            )
    for context in contexts:
        if context.agent_id in owners:
            conn.execute(
                sa.insert(_contexts).values(user_id=owners[context.agent_id], **context._asdict())
            )


def downgrade() -> None:
    conn = op.get_bind()
    current = sa.and_(
        _revisions.c.user_id == _agents.c.user_id,
        _revisions.c.agent_id == _agents.c.id,
        _revisions.c.id == _agents.c.revision_id,
    )
    agents = conn.execute(
        sa.select(
            _agents.c.id,
            _agents.c.user_id,
            _agents.c.etag,
            _agents.c.create_time,
            _agents.c.update_time,
            _revisions.c.definition,
            _revisions.c.handoffs,
        )
        .select_from(_agents.join(_revisions, current))
        .order_by(_agents.c.seq)
    ).all()
    columns = [_contexts.c[name] for name in _CONTEXT_COLUMNS]
    contexts = conn.execute(sa.select(*columns).order_by(_contexts.c.seq)).all()
    for table in (
        "workflow_agents",
        "workflows",
        "contexts",
        "agent_references",
        "agent_revisions",
        "agents",
    ):
        op.drop_table(table)
    _create_0001_agent_tables()

    for agent in agents:
        conn.execute(
            sa.insert(_old_agents).values(
                id=agent.id,
                user_id=agent.user_id,
                spec=_old_spec(agent.definition),
                etag=agent.etag,
                create_time=agent.create_time,
                update_time=agent.update_time,
            )
        )
    for agent in agents:
        for position, target in enumerate(agent.handoffs):
            conn.execute(
                sa.insert(_old_handoffs).values(
                    agent_id=agent.id, target_id=target, position=position
                )
            )
    old_contexts = sa.table("contexts", *(sa.column(c.name, c.type) for c in columns))
    for context in contexts:
        conn.execute(sa.insert(old_contexts).values(**context._asdict()))
