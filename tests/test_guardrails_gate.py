"""The streaming gate on its own: however a text is cut into deltas, what trips an
output guardrail is never released, and prose is held back only a little."""

from __future__ import annotations

import random
import re

import pytest

from agentmesh.gen.guardrails.v1 import guardrails_pb2 as g
from agentmesh.gen.registry.v1 import registry_pb2 as r
from agentmesh.guardrail_checks import pattern_width, stream_window
from services.runner.guarding import OutputGate, Tripped

PII = g.Guardrail(name="pii", builtin=g.BuiltinCheck(pii=g.PiiDetector()))
SECRETS = g.Guardrail(name="secrets", builtin=g.BuiltinCheck(secrets=g.SecretsDetector()))
TERMS = g.Guardrail(
    name="terms", builtin=g.BuiltinCheck(blocked_terms=g.BlockedTerms(terms=["project x"]))
)


def regex(pattern: str, action=g.RegexCheck.ACTION_BLOCK) -> g.Guardrail:
    return g.Guardrail(name="re", regex=g.RegexCheck(pattern=pattern, action=action))


def gate(*guardrails: g.Guardrail) -> OutputGate:
    return OutputGate({"a": r.Agent(output_guardrails=guardrails)})


def chunks(text: str, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        step = rng.choice([1, 1, 2, 3, 5, 8, 13])
        pieces.append(text[i : i + step])
        i += step
    return pieces


def released_until_trip(the_gate: OutputGate, pieces: list[str]) -> tuple[str, Tripped | None]:
    sent = []
    try:
        for piece in pieces:
            sent.append(the_gate.feed("a", piece))
        sent.append(the_gate.end_message())
    except Tripped as tripped:
        return "".join(sent), tripped
    return "".join(sent), None


FINDS = [
    (PII, "4111 1111 1111 1111", "4111"),
    (PII, "4111-1111-1111-1111", "4111"),
    (PII, "DE89 3704 0044 0532 0130 00", "DE89"),
    (PII, "+44 20 7946 0958", "+44"),
    (PII, "ann.smith@example.com", "ann."),
    (SECRETS, "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z", "sk-"),
    (SECRETS, "Bearer abcdefghijklmnopqrstuvwxyz0123456789", "abcdef"),
    (SECRETS, "-----BEGIN RSA PRIVATE KEY-----", "BEGIN"),
    (SECRETS, 'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"', "wJalr"),
    (TERMS, "Project X", "Project"),
    (regex(r"\bcode \d{6}\b"), "code 123456", "code 1"),
]


@pytest.mark.parametrize("guardrail, finding, marker", FINDS)
@pytest.mark.parametrize("seed", range(8))
def test_what_trips_is_never_released_however_it_is_cut(guardrail, finding, marker, seed):
    text = f"Sure, here is what you asked for today: {finding} and then more words follow."
    sent, tripped = released_until_trip(gate(guardrail), chunks(text, seed))
    assert tripped is not None and tripped.result.tripwire_triggered
    assert marker not in sent
    assert text.startswith(sent)


def test_a_number_that_only_looks_like_a_card_while_streaming_is_let_through():
    # 4111111111111111 is Luhn-valid; the 22-digit number it starts is no card.
    text = "order 4111111111111111111111 ships today"
    for seed in range(6):
        sent, tripped = released_until_trip(gate(PII), chunks(text, seed))
        assert tripped is None and sent == text


def test_prose_is_held_back_only_a_little():
    the_gate = gate(PII, SECRETS, TERMS, regex(r"(?i)\bpassword\s?[:=]\s?\S{4}"))
    text = "Your order shipped on Monday and should arrive within three business days. "
    sent = "".join(the_gate.feed("a", word) for word in re.findall(r"\S+\s*", text))
    assert len(text) - len(sent) <= 24, (text, sent)
    assert sent + the_gate.end_message() == text


def test_checks_on_the_whole_output_hold_the_text_until_the_run_ends():
    unbounded = regex(r"secret.*word")
    the_gate = gate(unbounded, PII)
    assert the_gate.holds("a")
    assert the_gate.feed("a", "a plain answer ") == ""
    assert the_gate.end_message() == ""
    assert the_gate.end_run() == "a plain answer "
    allow = gate(regex("^OK", g.RegexCheck.ACTION_ALLOW))
    assert allow.holds("a") and allow.feed("a", "OK then") == ""


def test_agents_without_output_guardrails_stream_straight_through():
    the_gate = OutputGate({"a": r.Agent(output_guardrails=[PII]), "b": r.Agent()})
    assert the_gate.feed("b", "4111 1111 1111 1111") == "4111 1111 1111 1111"
    assert not OutputGate({"b": r.Agent()}).active


@pytest.mark.parametrize(
    "pattern, width",
    [
        (r"\d{3}-\d{2}-\d{4}", 11),
        (r"\b(password|secret)\b", 8),
        (r"(?i)foo", 3),
        (r"[[:alpha:]]{2,5}", 5),
        (r"\QA+B\E", 3),
        (r"(?P<n>ab|c)?", 2),
        (r"\p{Greek}\pL", 2),
        (r"[]a]b", 2),
        (r"sk-[A-Za-z0-9]+", None),
        (r"a.*b", None),
        (r"x{2,}", None),
        (r"a{,3}", None),  # RE2 reads {,3} as text; this reading does not guess
        (r"(a|b)\1", None),
    ],
)
def test_pattern_width_is_an_upper_bound_or_unknown(pattern, width):
    assert pattern_width(pattern) == width


def test_stream_windows_by_check():
    assert stream_window(regex(r"\d{4}")) == 8
    assert stream_window(regex(r"\d+")) is None
    assert stream_window(regex(r"\d{4}", g.RegexCheck.ACTION_ALLOW)) is None
    assert stream_window(TERMS) == len("project x") + 4
    limit = g.Guardrail(name="n", builtin=g.BuiltinCheck(max_length=g.MaxLength(max_chars=9)))
    assert stream_window(limit) is None
    assert stream_window(g.Guardrail(name="c", code=g.CodeCheck(source="x"))) is None
