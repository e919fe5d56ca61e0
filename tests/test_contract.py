"""The contract keeps its conventions (AIP style), for every service, present and future."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from google.api import annotations_pb2, resource_pb2

import agentmesh.gen
from agentmesh.events import event_spec
from agentmesh.gen.common.v1 import options_pb2


def _modules():
    for module_info in pkgutil.walk_packages(agentmesh.gen.__path__, "agentmesh.gen."):
        if module_info.name.endswith("_pb2") and ".buf." not in module_info.name:
            yield importlib.import_module(module_info.name)


MODULES = list(_modules())
SERVICES = [
    service for module in MODULES for service in module.DESCRIPTOR.services_by_name.values()
]
METHODS = [(service, method) for service in SERVICES for method in service.methods]
EVENT_FILES = [module for module in MODULES if module.__name__.endswith(".events_pb2")]


def test_all_six_services_are_in_the_contract():
    names = {service.full_name for service in SERVICES}
    for service in (
        "agentmesh.registry.v1.RegistryService",
        "agentmesh.registry.v1.AccountService",
        "agentmesh.runner.v1.RunnerService",
        "agentmesh.guardrails.v1.GuardrailService",
        "agentmesh.providers.v1.ProviderService",
        "agentmesh.files.v1.FileService",
        "agentmesh.traces.v1.TraceService",
    ):
        assert service in names


@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda m: getattr(m, "name", None))
def test_public_methods_have_a_rest_mapping(service, method):
    has_http = method.GetOptions().HasExtension(annotations_pb2.http)
    # Called by services only, never through the gateway: no REST mapping on purpose.
    audience = method.GetOptions().Extensions[options_pb2.audience]
    service_only = audience == options_pb2.AUDIENCE_SERVICE
    # A client stream (uploads) cannot be transcoded from one REST body.
    if service_only or method.client_streaming:
        assert not has_http, f"{method.full_name} must not be exposed through the gateway"
    else:
        rule = method.GetOptions().Extensions[annotations_pb2.http]
        path = rule.get or rule.post or rule.patch or rule.delete or rule.put
        assert path.startswith("/api/v1/"), method.full_name


@pytest.mark.parametrize(("service", "method"), METHODS, ids=lambda m: getattr(m, "name", None))
def test_standard_methods_have_standard_fields(service, method):
    request, response = method.input_type.fields_by_name, method.output_type.fields_by_name
    if method.name.startswith("List"):
        assert {"page_size", "page_token"} <= set(request), method.full_name
        assert "next_page_token" in response, method.full_name
    if method.name.startswith("Update"):
        assert "update_mask" in request, method.full_name
    if method.name.startswith(("Get", "Delete")):
        assert "name" in request, method.full_name


def test_resources_carry_their_name_first():
    for service in SERVICES:
        for message in service.file.message_types_by_name.values():
            if message.GetOptions().HasExtension(resource_pb2.resource):
                name = message.fields_by_name.get("name")
                assert name is not None and name.number == 1, message.full_name


def test_the_service_only_methods_are_the_ones_the_contract_names():
    service_only = {
        method.full_name
        for _, method in METHODS
        if method.GetOptions().Extensions[options_pb2.audience] == options_pb2.AUDIENCE_SERVICE
    }
    assert service_only == {
        "agentmesh.registry.v1.AccountService.Authenticate",
        "agentmesh.registry.v1.AccountService.ReserveCredits",
        "agentmesh.registry.v1.AccountService.SettleCredits",
        "agentmesh.registry.v1.AccountService.ReleaseCredits",
        "agentmesh.providers.v1.ProviderService.ResolveCredentials",
    }


@pytest.mark.parametrize("module", EVENT_FILES, ids=lambda m: m.__name__)
def test_every_event_names_its_subject_and_delivery(module):
    """Events live in their owning service's events.proto and say where they go."""
    assert module.DESCRIPTOR.message_types_by_name, module.__name__
    for message in module.DESCRIPTOR.message_types_by_name.values():
        spec = event_spec(getattr(module, message.name))
        assert spec.subject and spec.delivery != options_pb2.DELIVERY_UNSPECIFIED, message.full_name
        if spec.delivery == options_pb2.DELIVERY_JETSTREAM:
            assert spec.stream, f"{message.full_name} names no JetStream stream"


def test_event_subjects_are_unique():
    subjects = [
        event_spec(getattr(module, message.name)).subject
        for module in EVENT_FILES
        for message in module.DESCRIPTOR.message_types_by_name.values()
    ]
    assert len(subjects) == len(set(subjects))
