"""What the runner's span exporter does to span data before it leaves the process:
secrets masked, sizes bounded, what storage cannot keep made storable; and batches
cut to sizes JetStream accepts, one user per batch."""

from __future__ import annotations

import json

from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st

from agentmesh.gen.traces.v1 import traces_pb2 as t
from services.runner.tracing import (
    MASK,
    MAX_ITEMS,
    MAX_SPAN_BYTES,
    MAX_TEXT,
    Redactor,
    _cut,
    span_message,
)
from services.traces.servicer import within_budget

PROVIDER_KEY = "my-own-provider-key-without-any-pattern"
OPENAI = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
GITHUB = "ghp_" + "aB3" * 12
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"


def redactor() -> Redactor:
    return Redactor(lambda user: [PROVIDER_KEY, "short"] if user == "users/u1" else [])


def test_known_keys_and_detected_tokens_are_masked_wherever_they_are():
    r = redactor()
    secrets = r.secrets_of("users/u1")
    value = {
        "input": [{"role": "user", "content": f"use {PROVIDER_KEY} or {OPENAI}"}],
        "output": f"Authorization: Bearer {OPENAI}\n{PEM}\n{GITHUB}",
        f"key {OPENAI}": "in a key too",
    }
    cleaned = json.dumps(r.value(value, secrets))
    for secret in (PROVIDER_KEY, OPENAI, GITHUB, "MIIEow"):
        assert secret not in cleaned
    assert cleaned.count(MASK) >= 5
    # Short known "keys" are not searched for: they would mask ordinary words.
    assert r.value("a short word", secrets) == "a short word"
    # Another user's keys are that user's: not known here, and no pattern finds it.
    assert r.value(PROVIDER_KEY, r.secrets_of("users/u2")) == PROVIDER_KEY


def test_values_under_secret_names_are_masked_and_others_kept():
    r = redactor()
    cleaned = r.value(
        {
            "api_key": "anything",
            "X-Api-Key": "anything",
            "access_token": "abc",
            "password": "hunter2",
            "max_tokens": "100",
            "usage": {"input_tokens": 12, "output_tokens": 3},
        }
    )
    assert cleaned == {
        "api_key": MASK,
        "X-Api-Key": MASK,
        "access_token": MASK,
        "password": MASK,
        "max_tokens": "100",
        "usage": {"input_tokens": 12, "output_tokens": 3},
    }


def test_sizes_are_bounded_with_markers_and_what_storage_refuses_is_fixed():
    r = redactor()
    long = r.value("x" * (MAX_TEXT + 500))
    assert long.startswith("x" * MAX_TEXT) and long.endswith("[truncated 500 characters]")
    many = r.value(list(range(MAX_ITEMS + 10)))
    assert len(many) == MAX_ITEMS + 1 and many[-1] == "[truncated 10 items]"
    deep: dict = {}
    node = deep
    for _ in range(100):
        node["next"] = {}
        node = node["next"]
    assert "nested too deep" in json.dumps(r.value(deep))
    assert r.value("nul\0here") == "nul\ufffdhere"
    assert r.value("lone \ud800 surrogate").encode("utf-8")
    assert r.value({"n": float("nan"), "i": float("inf"), "ok": 1.5}) == {
        "n": None,
        "i": None,
        "ok": 1.5,
    }
    # A secret cut by the truncation is still found: masking comes first.
    tail = r.value("x" * (MAX_TEXT - 10) + " " + OPENAI)
    assert OPENAI[:10] not in tail


# Pieces of text that make or break a secret where texts meet: prefixes, bodies,
# boundaries the patterns look at.
_PIECES = st.sampled_from(
    [OPENAI, GITHUB, PEM, "sk-", "proj-", "Ab3dEf6hIj9kLm2nOp5qRs8t", "AKIA", "ABCDEFGHIJKLMNOP",
     "Bearer", " ", "\t", "\n", "x", "-", "_", "eyJhbGciOi", ".", "é", "\ud800", PROVIDER_KEY]
)  # fmt: skip
_TEXTS = st.lists(_PIECES, max_size=6).map("".join)
_VALUES = st.recursive(
    st.none() | st.integers() | _TEXTS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXTS, inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_VALUES)
def test_one_search_over_a_value_masks_what_a_search_per_string_masks(value):
    # value() searches all of a value's text at once and each string only when that
    # finds something; it must mask exactly what searching every string masks.
    r = redactor()
    secrets = r.secrets_of("users/u1")
    assert r.value(value, secrets) == r._value(value, secrets, True, 0)


def test_a_span_becomes_its_message_with_its_error():
    r = redactor()
    message = span_message(
        {
            "id": "span_1",
            "trace_id": "trace_1",
            "parent_id": None,
            "started_at": "2026-11-27T09:00:00.000001+00:00",
            "ended_at": "2026-11-27T09:00:01+00:00",
            "span_data": {"type": "function", "name": "lookup", "input": OPENAI},
            "error": {"message": f"failed with {OPENAI}", "data": {"key": OPENAI}},
        },
        r,
        [],
    )
    assert (message.type, message.name, message.parent_id) == ("function", "lookup", "")
    assert message.end_time.ToNanoseconds() - message.start_time.ToNanoseconds() == 999_999_000
    assert OPENAI not in str(message) and message.error == f"failed with {MASK}"


def test_batches_are_cut_below_the_payload_limit():
    spans = [
        t.Span(span_id=f"span_{i}", trace_id="trace_1", type="custom", name="x" * 4000)
        for i in range(400)
    ]
    batches = list(_cut("users/u1", spans))
    assert len(batches) > 1
    assert all(batch.ByteSize() < 600 * 1024 and batch.user == "users/u1" for batch in batches)
    assert [s.span_id for b in batches for s in b.spans] == [s.span_id for s in spans]


def test_a_span_too_big_to_send_is_cut_to_the_head_of_each_field():
    conversation = [{"role": "user", "content": "y" * MAX_TEXT} for _ in range(MAX_ITEMS)]
    message = span_message(
        {
            "id": "span_big",
            "trace_id": "trace_1",
            "span_data": {"type": "generation", "model": "m", "input": conversation},
        },
        redactor(),
        [],
    )
    assert message.ByteSize() <= MAX_SPAN_BYTES
    data = json_format.MessageToDict(message.data)
    assert data["model"] == "m" and data["input"].endswith("characters]")
    assert data["input"].startswith("[{") and '"content": "yyy' in data["input"][:40]


def test_a_trace_too_big_for_a_client_leaves_out_its_largest_spans_data():
    trace = t.Trace(name="traces/trace_1")
    for index in range(10):
        span = trace.spans.add(span_id=f"span_{index}", type="generation", name="m")
        span.data.update({"input": "z" * (100_000 * (index + 1))})
    fitted = within_budget(trace, budget=2_000_000)
    assert fitted.ByteSize() <= 2_000_000 and len(fitted.spans) == 10
    kept = [s.span_id for s in fitted.spans if "input" in s.data]
    assert kept == [f"span_{i}" for i in range(len(kept))] and kept  # the smallest stay
    assert all(s.data["truncated"] for s in fitted.spans if "input" not in s.data)
