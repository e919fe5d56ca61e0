"""The contract-driven helpers every servicer uses: names from resource patterns,
updates from field behaviours, error text that stays small and on one line."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2

from agentmesh.api import merge_update
from agentmesh.errors import Aborted, InvalidArgument, quoted
from agentmesh.gen.providers.v1 import providers_pb2 as p
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.names import ResourceName

AGENT = ResourceName.of(r.Agent)
CONTEXT = ResourceName.of(r.Context)


def test_names_come_from_the_resource_patterns():
    assert (AGENT.pattern, CONTEXT.pattern) == (
        "agents/{agent}",
        "agents/{agent}/contexts/{context}",
    )
    assert AGENT.format("a1") == "agents/a1"
    assert CONTEXT.format("a1", "c2") == "agents/a1/contexts/c2"
    assert CONTEXT.parse("agents/a1/contexts/c2") == ("a1", "c2")
    assert AGENT.id("agents/a1") == "a1"
    for wrong in ("agents/", "agents/a1/x", "providers/a1", "agents/a b", "agents/" + "a" * 65):
        assert AGENT.match(wrong) is None
    with pytest.raises(ValueError):
        AGENT.parse("agents/a/b")


def provider(**fields) -> p.Provider:
    return p.Provider(
        name="providers/p1",
        display_name="one",
        type=p.PROVIDER_TYPE_CUSTOM,
        base_url="http://x/v1",
        etag="e1",
        **fields,
    )


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def test_merge_takes_only_the_masked_fields():
    patch = p.Provider(name="providers/p1", display_name="two", base_url="http://y/v1")
    merged = merge_update("provider", provider(), patch, mask("display_name"))
    assert (merged.display_name, merged.base_url) == ("two", "http://x/v1")


def test_output_only_paths_are_ignored_and_immutable_ones_refused():
    patch = p.Provider(name="providers/p1", api_key_hint="zzzz", display_name="two")
    merged = merge_update("provider", provider(), patch, mask("api_key_hint", "display_name"))
    assert (merged.api_key_hint, merged.display_name) == ("", "two")
    for path in ("type", "etag", "no_such_field", "models.x"):
        with pytest.raises(InvalidArgument) as error:
            merge_update("provider", provider(), patch, mask(path))
        assert [field for field, _ in error.value.violations] == ["update_mask"]


def test_the_wildcard_replaces_every_updatable_field():
    patch = p.Provider(name="providers/p1", display_name="two", type=p.PROVIDER_TYPE_OPENAI)
    merged = merge_update("provider", provider(models=["m"]), patch, mask("*"))
    # base_url and models were cleared; type is immutable and stays.
    assert (merged.display_name, merged.base_url, list(merged.models)) == ("two", "", [])
    assert merged.type == p.PROVIDER_TYPE_CUSTOM


def test_a_stale_etag_aborts_and_the_merged_resource_is_validated():
    with pytest.raises(Aborted) as stale:
        merge_update("provider", provider(), p.Provider(etag="old"), mask("display_name"))
    assert stale.value.code == grpc.StatusCode.ABORTED
    with pytest.raises(InvalidArgument) as invalid:
        merge_update("provider", provider(), p.Provider(base_url="ftp://x"), mask("base_url"))
    assert [field for field, _ in invalid.value.violations] == ["provider.base_url"]


def test_quoted_user_text_cannot_forge_a_line_or_grow_an_error():
    forged = "x\n2026-11-27 INFO agentmesh.rpc /Admin OK caller=users/admin"
    assert "\n" not in quoted(forged)
    assert len(quoted("y" * 1_000_000)) < 300
    # However much is wrong, the status fits the 8 KiB of trailers a client accepts.
    error = InvalidArgument([("agent.tools[0].name" * 100, "z" * 100_000)] * 1000)
    assert len(error.to_status().SerializeToString()) < 4096
