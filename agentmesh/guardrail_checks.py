"""The guardrail checks decided in-process: `regex` and `builtin`.

The runner (to gate input, output and streamed text without a network hop) and
the guardrails service (EvaluateGuardrails) share them. Nothing here touches the
network or runs user code; code, endpoint and agent guardrails are decided
elsewhere (`is_local` says which is which).

Every user-supplied pattern runs on RE2 through `compile_pattern` (linear time,
no catastrophic backtracking); the detectors' own patterns are RE2 too, compiled
once at import. A verdict's message says what was found and where, in words a
person can act on, but never repeats a secret: a card number or key shows at
most its last four characters, and personal data not even that.

Positions in messages and `info` are character offsets into the text, counted
from 0, end exclusive: "characters 10-29" is `text[10:29]`.

Cost is bounded: a detector stops after MAX_FINDINGS findings (the verdict is
decided), and after ruling out MAX_REJECTED look-alikes (numbers failing their
checksum, a term inside longer words) it stops and fails closed, since what it
did not look at could hide a finding.
"""

from __future__ import annotations

import functools
import itertools
import json
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import re2
import referencing
import referencing.exceptions
from google.protobuf import json_format, struct_pb2

from agentmesh.errors import quoted
from agentmesh.gen.guardrails.v1 import guardrails_pb2
from agentmesh.patterns import compile_pattern

LOCAL_KINDS = frozenset({"regex", "builtin"})

# Findings past this many per detector are not looked for: the verdict is already
# decided, and a megabyte of emails must not cost a second. `info` says so.
MAX_FINDINGS = 1000
# Candidates a scan may reject (card-shaped numbers failing Luhn, a term inside
# longer words) before it stops: each costs microseconds of Python, and a text
# built of nothing else must not cost seconds. A scan that stops fails closed.
MAX_REJECTED = 10_000
# How many findings `info` lists one by one (the counts cover them all).
_LISTED_FINDINGS = 20
# Compiled user patterns kept. RE2 budgets each at up to 8 MiB, so the bound is
# also a memory bound.
_CACHED_PATTERNS = 64


@dataclass(frozen=True)
class Verdict:
    """One guardrail's decision on one text."""

    tripwire_triggered: bool
    # Why (or why not), for the run record and whoever reads it: what was found,
    # where; never a secret in full.
    message: str
    # JSON-safe detail: kinds found, counts, spans.
    info: dict[str, Any]


class InvalidGuardrail(ValueError):
    """A guardrail definition that cannot be evaluated (a bad pattern or schema, a
    missing option). The registry refuses these at save time; the guardrails
    service gets definitions straight from its callers, so it must answer
    INVALID_ARGUMENT naming `field`, a path inside the Guardrail message."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def is_local(guardrail: guardrails_pb2.Guardrail) -> bool:
    """Whether `evaluate` decides this guardrail (regex and builtin); code, endpoint
    and agent guardrails need the sandbox, the network or a model."""
    return guardrail.WhichOneof("check") in LOCAL_KINDS


def evaluate(guardrail: guardrails_pb2.Guardrail, text: str) -> Verdict:
    """The verdict of a regex or builtin guardrail on `text`.

    Raises InvalidGuardrail for a definition that cannot be evaluated, and
    ValueError for a guardrail that is not local (see `is_local`).
    """
    kind = guardrail.WhichOneof("check")
    if kind == "regex":
        return _evaluate_regex(guardrail.regex, text)
    if kind == "builtin":
        return _evaluate_builtin(guardrail.builtin, text)
    if kind is None:
        raise InvalidGuardrail("check", "a guardrail needs a check")
    raise ValueError(f"{kind} guardrails are not decided in-process")


# --- Scanning -----------------------------------------------------------------

# What a detector keeps of a candidate match: (start, end) in the candidate's
# characters, or None to reject it. It sees the candidate, the text's characters
# just before and after it (as many as the scan's `context`), and the RE2 match
# (for its group names).
Accept = Callable[[str, str, str, Any], tuple[int, int] | None]


@dataclass(frozen=True)
class _Finding:
    kind: str
    start: int
    end: int
    # What a person may see of it: the value's last four characters ("ending
    # 1111"), or a matched phrase that is no secret. None shows nothing.
    shown: str | None = None


class _Text:
    """A text encoded once, for many RE2 searches.

    google-re2 re-encodes a str (all of it) on every search, so resuming a
    search after a rejected candidate would cost the whole text each time;
    searching the UTF-8 bytes from an offset costs nothing. Offsets go back to
    characters for reports.
    """

    __slots__ = ("text", "data", "ascii", "gave_up")

    def __init__(self, text: str) -> None:
        self.text = text
        self.ascii = text.isascii()
        # surrogatepass: a str from JSON may hold a lone surrogate; it must be
        # searched, not crash the check.
        self.data = text.encode("utf-8", "surrogatepass")
        # Set when a scan stopped at MAX_REJECTED: what it did not look at may
        # hold a finding, so the detector must not pass the text.
        self.gave_up = False

    def scan(
        self, pattern: Any, accept: Accept | None = None, *, context: int = 2
    ) -> Iterator[tuple[int, int, str, Any]]:
        """(start, end, value, match) of each accepted match, in characters.

        A rejected candidate does not hide a match that overlaps it: the search
        resumes at the candidate's next character, not after it.
        """
        data = self.data
        size = len(data)
        cursor_byte = cursor_char = 0
        pos = rejected = 0
        while pos <= size:
            match = pattern.search(data, pos)
            if match is None:
                return
            start, end = match.span()
            candidate = data[start:end].decode("utf-8", "surrogatepass")
            if accept is None:
                kept: tuple[int, int] | None = (0, len(candidate))
            else:
                # UTF-8 takes at most 4 bytes a character; "ignore" drops the
                # piece of one that a cut leaves.
                reach = 4 * context
                before = data[max(0, start - reach) : start].decode("utf-8", "ignore")
                after = data[end : end + reach].decode("utf-8", "ignore")
                kept = accept(candidate, before[-context:], after[:context], match)
            if kept is None:
                rejected += 1
                if rejected > MAX_REJECTED:
                    self.gave_up = True
                    return
                pos = self._next_char(start)
                continue
            if self.ascii:
                char_start = start
            else:
                # Matches come in order, so the offset is counted on from the last.
                cursor_char += len(data[cursor_byte:start].decode("utf-8", "surrogatepass"))
                cursor_byte = start
                char_start = cursor_char
            head, tail = kept
            value = candidate[head:tail]
            yield char_start + head, char_start + tail, value, match
            kept_end = start + len(candidate[:tail].encode("utf-8", "surrogatepass"))
            pos = kept_end if kept_end > start else self._next_char(start)

    def _next_char(self, pos: int) -> int:
        pos += 1
        while pos < len(self.data) and 0x80 <= self.data[pos] < 0xC0:
            pos += 1
        return pos


def _is_word(char: str) -> bool:
    return bool(char) and (char.isalnum() or char == "_")


def _mixed(value: str) -> bool:
    """Whether a token looks generated rather than written: at least two of
    lower case, upper case and digits (a key is; `sk-learn-is-great` is not)."""
    classes = (
        any(c.islower() for c in value),
        any(c.isupper() for c in value),
        any(c.isdigit() for c in value),
    )
    return sum(classes) >= 2


def _ending(value: str) -> str | None:
    """The last four characters of a secret, and only of one long enough that
    four characters leave most of it hidden."""
    compact = value.replace(" ", "").replace("-", "")
    return compact[-4:] if len(compact) >= 12 else None


def _fixed(pattern: str) -> Any:
    """One of this module's own patterns, compiled at import."""
    return compile_pattern(pattern)


# --- regex --------------------------------------------------------------------


@functools.lru_cache(maxsize=_CACHED_PATTERNS)
def _user_pattern(pattern: str) -> Any:
    return compile_pattern(pattern)


def _compiled(pattern: str, field: str) -> Any:
    try:
        return _user_pattern(pattern)
    except ValueError as error:
        raise InvalidGuardrail(field, str(error)) from None


def _evaluate_regex(check: guardrails_pb2.RegexCheck, text: str) -> Verdict:
    if not check.pattern:
        raise InvalidGuardrail("regex.pattern", "a regex guardrail needs a pattern")
    block = check.action == guardrails_pb2.RegexCheck.ACTION_BLOCK
    if not block and check.action != guardrails_pb2.RegexCheck.ACTION_ALLOW:
        raise InvalidGuardrail("regex.action", "choose ACTION_BLOCK or ACTION_ALLOW")
    found = next(_Text(text).scan(_compiled(check.pattern, "regex.pattern")), None)
    info: dict[str, Any] = {
        "check": "regex",
        "action": "block" if block else "allow",
        "matched": found is not None,
    }
    if found is not None:
        info["start"], info["end"] = found[0], found[1]
        where = f" at characters {found[0]}-{found[1]}"
    if block:
        if found is not None:
            return Verdict(True, f"the text matches the blocked pattern{where}", info)
        return Verdict(False, "the text does not match the blocked pattern", info)
    if found is None:
        return Verdict(True, "the text does not match the required pattern", info)
    return Verdict(False, f"the text matches the required pattern{where}", info)


# --- builtin ------------------------------------------------------------------


def _evaluate_builtin(check: guardrails_pb2.BuiltinCheck, text: str) -> Verdict:
    detector = check.WhichOneof("detector")
    if detector == "pii":
        return _pii(check.pii, text)
    if detector == "secrets":
        return _secrets(text)
    if detector == "prompt_injection":
        return _prompt_injection(check.prompt_injection, text)
    if detector == "max_length":
        return _max_length(check.max_length, text)
    if detector == "blocked_terms":
        return _blocked_terms(check.blocked_terms, text)
    if detector == "json_schema":
        return _json_schema(check.json_schema, text)
    raise InvalidGuardrail("builtin", "a builtin guardrail needs a detector")


@dataclass(frozen=True)
class _Label:
    one: str  # "an email address"
    singular: str  # "email address"
    plural: str  # "email addresses"
    detail: str = ""  # "Luhn-valid", said of each one found
    # Between the label and a quoted finding: "the blocked term 'x'", "a phrase
    # that ...: 'x'".
    joiner: str = ": "

    def count(self, n: int) -> str:
        return f"{n} {self.singular if n == 1 else self.plural}"

    def describe(self, finding: _Finding, *, quote: bool = False) -> str:
        notes = [self.detail] if self.detail else []
        if finding.shown is not None and not quote:
            notes.append(f"ending {finding.shown}")
        text = self.one + (f" ({', '.join(notes)})" if notes else "")
        if quote and finding.shown is not None:
            text += f"{self.joiner}{quoted(finding.shown, 80)}"
        return f"{text} at characters {finding.start}-{finding.end}"


def _report(
    detector: str,
    findings: list[_Finding],
    labels: Mapping[str, _Label],
    *,
    things: str,
    clear: str,
    quote: bool = False,
    truncated: bool = False,
    gave_up: str | None = None,
) -> Verdict:
    """A verdict from a detector's findings: tripped if there is any; the message
    names the first and counts the rest by kind.

    `gave_up` names what a scan stopped ruling out (see MAX_REJECTED): with
    nothing found, the rest of the text went unchecked, and it does not pass.
    """
    findings = sorted(findings, key=lambda f: (f.start, f.end))
    counts: dict[str, int] = {}
    for finding in findings:
        counts[finding.kind] = counts.get(finding.kind, 0) + 1
    listed = []
    for finding in findings[:_LISTED_FINDINGS]:
        entry: dict[str, Any] = {"kind": finding.kind, "start": finding.start, "end": finding.end}
        if finding.shown is not None:
            entry["text" if quote else "ending"] = finding.shown
        listed.append(entry)
    info: dict[str, Any] = {
        "detector": detector,
        "count": len(findings),
        "counts": counts,
        "findings": listed,
        "truncated": truncated or gave_up is not None,
    }
    if not findings:
        if gave_up is not None:
            message = (
                f"stopped checking after ruling out {MAX_REJECTED:,} {gave_up}: "
                "the rest of the text went unchecked, so it does not pass"
            )
            return Verdict(True, message, info)
        return Verdict(False, clear, info)
    first = findings[0]
    described = labels[first.kind].describe(first, quote=quote)
    if len(findings) == 1:
        return Verdict(True, f"found {described}", info)
    more = "+" if truncated or gave_up is not None else ""
    by_kind = ", ".join(labels[kind].count(n) for kind, n in counts.items())
    message = f"found {len(findings)}{more} {things} ({by_kind}); the first is {described}"
    return Verdict(True, message, info)


# PII ---------------------------------------------------------------------------

_PII = guardrails_pb2.PiiDetector
_PII_KINDS = {
    _PII.KIND_EMAIL: "email",
    _PII.KIND_PHONE: "phone",
    _PII.KIND_PAYMENT_CARD: "payment_card",
    _PII.KIND_IBAN: "iban",
}
_PII_LABELS = {
    "email": _Label("an email address", "email address", "email addresses"),
    "phone": _Label("a phone number", "phone number", "phone numbers"),
    "payment_card": _Label(
        "a payment card number", "payment card number", "payment card numbers", "Luhn-valid"
    ),
    "iban": _Label("an IBAN", "IBAN", "IBANs", "checksum-valid"),
}

# The top-level domain is \pL{2,}, not \pL{2,63}: a counted Unicode class makes
# RE2's DFA some 40 times slower.
_EMAIL = _fixed(
    r"[\pL\pN._%+\-]+@[\pL\pN](?:[\pL\pN\-]*[\pL\pN])?"
    r"(?:\.[\pL\pN](?:[\pL\pN\-]*[\pL\pN])?)*\.\pL{2,}"
)

# Candidates only: each is judged again in Python (digit counts, dates, what
# stands next to it), because RE2 has no look-around.
_PHONE = _fixed(
    # International: +CC or 00CC, then groups, an optional (area) among them.
    r"(?:\+|\b00)[1-9]\d{0,2}(?:[ .\-]?\(\d{1,4}\))?(?:[ .\-]?\d{1,5}){1,6}"
    # National with a trunk 0: 020 7946 0958, (030) 12345678, 01 23 45 67 89.
    r"|\(0\d{1,4}\)[ .\-/]?\d{2,8}(?:[ .\-/]?\d{2,8}){0,3}"
    r"|\b0[1-9]\d{0,4}(?:[ .\-/]\d{2,8}){1,4}"
    r"|\b0[1-9]\d{8,10}\b"
    # North American 3-3-4: (415) 555-2671, 415.555.2671, 1-800-555-0199.
    r"|(?:\b1[ .\-]?)?(?:\(\d{3}\)[ .\-]?|\b\d{3}[ .\-])\d{3}[ .\-]\d{4}\b"
)
# 2026-11-27, 27.11.2026, 11/27/2026 (and a time after them) are not phone numbers.
_DATE_START = _fixed(r"^(?:\d{4}[./\-]\d{1,2}[./\-]\d{1,2}|\d{1,2}[./\-]\d{1,2}[./\-]\d{2,4})")

# Issuers' numbers start 2-6 (Mastercard 2/5, Visa 4, Amex/JCB/Diners 3,
# Discover/UnionPay 6); 0, 1 and 7-9 are not payment cards, and leaving them out
# keeps millisecond timestamps and 19-digit ids (1...) from being candidates.
_CARD = _fixed(
    r"\b[2-6](?:\d{12,18}"
    r"|\d{3}(?:[ \-]\d{4}){2,3}(?:[ \-]\d{1,4})?"  # 4-4-4-4(-3), 4-4-4-1
    r"|\d{3}[ \-]\d{6}[ \-]\d{4,5})\b"  # American Express, Diners: 4-6-5, 4-6-4
)

_IBAN = _fixed(r"(?i)\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")

# IBAN length by country, from the SWIFT IBAN registry: a length check beside the
# mod-97 checksum keeps random tokens (1 in 97 pass the checksum) out.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22,
    "BH": 22, "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24,
    "DE": 22, "DJ": 27, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FK": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27,
    "GT": 28, "HN": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MN": 20,
    "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25,
    "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
    "YE": 30,
}  # fmt: skip


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries (ASCII digits only)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = ord(char) - 48
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(iban: str) -> bool:
    """ISO 13616: a known country, its length, and mod 97 == 1 over the IBAN with
    its first four characters moved to the end and letters as 10..35."""
    compact = iban.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    if not compact.isascii() or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


_SEPARATORS = str.maketrans("", "", " -")
# Longer than a card number (23 characters) or an IBAN (42) written out: a
# candidate sees this much either side, to tell whether it is part of one.
_NUMBER_REACH = 48


def _accept_card(candidate: str, before: str, after: str, _: Any) -> tuple[int, int] | None:
    number = candidate.translate(_SEPARATORS)
    if _overlaps(_IBAN, before, candidate, after):
        return None  # an IBAN's digit groups, Luhn-valid one time in ten
    if 13 <= len(number) <= 19 and luhn_valid(number):
        return 0, len(candidate)
    # A card number followed by more digits (a year, a CVC) runs long: cut it
    # back, a group at a time, to a Luhn-valid card.
    end = len(candidate)
    while (end := max(candidate.rfind(" ", 0, end), candidate.rfind("-", 0, end))) > 0:
        count = len(candidate[:end].translate(_SEPARATORS))
        if count < 13:
            return None
        if count <= 19 and luhn_valid(number[:count]):
            return 0, end
    return None


def _accept_iban(candidate: str, before: str, after: str, _: Any) -> tuple[int, int] | None:
    compact = candidate.replace(" ", "").upper()
    length = _IBAN_LENGTHS.get(compact[:2])
    if length is None or len(compact) < length:
        return None
    # Over-long (an IBAN then a number): the IBAN must end where a group does.
    seen, end = 0, len(candidate)
    for index, char in enumerate(candidate):
        if char != " ":
            seen += 1
        if seen == length:
            end = index + 1
            break
    if end != len(candidate) and candidate[end] != " ":
        return None
    return (0, end) if iban_valid(compact[:length]) else None


def _accept_phone(candidate: str, before: str, after: str, _: Any) -> tuple[int, int] | None:
    last, previous = before[-1:], before[-2:-1]
    if _is_word(last) or _is_word(after[:1]):
        return None
    # INV-555-123-4567, v1.020 7946, /orders/0123456789: part of something else.
    if last in ("-", ".", "/") and _is_word(previous):
        return None
    if after[:1] in ("-", ".", "/", ":") and after[1:2].isdigit():
        return None
    if _DATE_START.search(candidate):
        return None
    digits = sum(char.isdigit() for char in candidate)
    if candidate.startswith("+"):
        plausible = 8 <= digits <= 15  # E.164: at most 15 digits
    elif candidate.startswith("00"):
        plausible = 10 <= digits <= 17
    elif candidate.startswith(("0", "(0")):
        plausible = 9 <= digits <= 13
    else:
        plausible = digits in (10, 11)
    if not plausible:
        return None
    # The digit groups of something shaped like a card number or an IBAN (DE89
    # 3704 0044 ... holds "0044 0532 0130 00") are no phone number, whether its
    # checksum holds or not.
    if _overlaps(_CARD, before, candidate, after) or _overlaps(_IBAN, before, candidate, after):
        return None
    return 0, len(candidate)


def _overlaps(pattern: Any, before: str, candidate: str, after: str) -> bool:
    """Whether `pattern` matches, in the candidate's surroundings, something that
    overlaps the candidate."""
    window = before + candidate + after
    start, end = len(before), len(before) + len(candidate)
    for match in pattern.finditer(window):
        if match.start() >= end:
            break
        if start < match.end():
            return True
    return False


def _pii(detector: guardrails_pb2.PiiDetector, text: str) -> Verdict:
    kinds: set[str] = set()
    for value in detector.kinds:
        if value not in _PII_KINDS:
            raise InvalidGuardrail("builtin.pii.kinds", f"unknown kind {value}")
        kinds.add(_PII_KINDS[value])
    wanted = kinds or set(_PII_KINDS.values())
    scanned = _Text(text)
    findings: list[_Finding] = []
    truncated = False

    def collect(kind: str, pattern: Any, accept: Accept | None, context: int = 2) -> None:
        nonlocal truncated
        if scanned.gave_up:  # the text does not pass anyway: spare the other scans
            return
        shown = kind in ("payment_card", "iban")
        found = 0
        for start, end, value, _ in scanned.scan(pattern, accept, context=context):
            if found == MAX_FINDINGS:
                truncated = True
                break
            found += 1
            findings.append(_Finding(kind, start, end, _ending(value) if shown else None))

    if "payment_card" in wanted:
        collect("payment_card", _CARD, _accept_card, _NUMBER_REACH)
    if "iban" in wanted:
        collect("iban", _IBAN, _accept_iban)
    if "email" in wanted:
        collect("email", _EMAIL, None)
    if "phone" in wanted:
        collect("phone", _PHONE, _accept_phone, _NUMBER_REACH)
    checked = ", ".join(_PII_LABELS[kind].plural for kind in sorted(wanted))
    return _report(
        "pii",
        findings,
        _PII_LABELS,
        things="pieces of personal data",
        clear=f"no personal data found (looked for {checked})",
        truncated=truncated,
        gave_up="look-alikes of personal data" if scanned.gave_up else None,
    )


# Secrets ---------------------------------------------------------------------

_SECRET_LABELS = {
    "private_key": _Label("a private key block", "private key block", "private key blocks"),
    "aws_secret_access_key": _Label(
        "an AWS secret access key", "AWS secret access key", "AWS secret access keys"
    ),
    "aws_access_key_id": _Label("an AWS access key id", "AWS access key id", "AWS access key ids"),
    "anthropic_api_key": _Label("an Anthropic API key", "Anthropic API key", "Anthropic API keys"),
    "openai_api_key": _Label("an OpenAI API key", "OpenAI API key", "OpenAI API keys"),
    "github_token": _Label("a GitHub token", "GitHub token", "GitHub tokens"),
    "slack_token": _Label("a Slack token", "Slack token", "Slack tokens"),
    "google_api_key": _Label("a Google API key", "Google API key", "Google API keys"),
    "stripe_live_key": _Label("a Stripe live key", "Stripe live key", "Stripe live keys"),
    "jwt": _Label("a JSON Web Token", "JSON Web Token", "JSON Web Tokens"),
    "bearer_token": _Label("a bearer token", "bearer token", "bearer tokens"),
    "agentmesh_api_key": _Label("an agentmesh API key", "agentmesh API key", "agentmesh API keys"),
}
_SECRET_PATTERNS = {
    # The header names the block; the body, when it is there, is part of the find.
    "private_key": r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r"(?:(?s:.*?)-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----)?",
    # A secret key is 40 characters of base64, telling only by what it is assigned to.
    "aws_secret_access_key": r"(?i:\baws_?secret_?(?:access_?)?key|\bsecret_?access_?key)"
    r"[\"']?\s*(?:=>|[:=])\s*[\"']?[A-Za-z0-9/+]{40}",
    "aws_access_key_id": r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    "anthropic_api_key": r"\bsk-ant-[a-z]+\d*-[A-Za-z0-9_\-]{20,}",
    "openai_api_key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
    "slack_token": r"\bxox[baprs]-[A-Za-z0-9\-]{10,}",
    "google_api_key": r"\bAIza[0-9A-Za-z_\-]{35}",
    "stripe_live_key": r"\b[rs]k_live_[0-9A-Za-z]{16,}",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*",
    "bearer_token": r"(?i:\bbearer)[ \t]+[A-Za-z0-9\-._~+/]{20,}=*",
    # agentmesh's own: am_ and 43 characters of token_urlsafe(32).
    "agentmesh_api_key": r"\bam_[A-Za-z0-9_\-]{32,}",
}
# One pass for all: each alternative a named group, so a match says its kind.
_SECRETS = _fixed("|".join(f"(?P<{kind}>{p})" for kind, p in _SECRET_PATTERNS.items()))
# Formats loose enough to catch words too ("sk-this-is-not-a-key"): these must
# also look generated.
_LOOSE_SECRETS = frozenset(
    {"openai_api_key", "anthropic_api_key", "slack_token", "bearer_token", "agentmesh_api_key"}
)


# Lower-case words and their separators at the front: "sk-", "sk-proj-", and all
# of "sk-this-is-not-a-key" but its last word.
_WORDY_PREFIX = _fixed(r"^(?:[a-z]+[-_])+")


def _accept_secret(candidate: str, before: str, after: str, match: Any) -> tuple[int, int] | None:
    if match.lastgroup in _LOOSE_SECRETS:
        token = candidate.split(None, 1)[-1]  # after "Bearer "
        prefix = _WORDY_PREFIX.search(token)
        if not _mixed(token[prefix.end() :] if prefix else token):
            return None
    return 0, len(candidate)


def may_hold_secrets(texts: Iterable[str]) -> bool:
    """Whether the secrets detector could find anything in any of `texts`, in one
    search over all of them: False means `secret_spans` finds nothing in each.

    Joined by newlines: the patterns' only assertions are word boundaries, which a
    newline keeps where each text starts and ends, so a match in one text is a
    match in the whole.
    """
    return _SECRETS.search("\n".join(texts).encode("utf-8", "surrogatepass")) is not None


def secret_spans(text: str) -> list[tuple[int, int]]:
    """Where the secrets detector finds a secret in `text`: (start, end) spans, in
    order, for callers that mask rather than judge (span redaction)."""
    return [(start, end) for start, end, _, _ in _Text(text).scan(_SECRETS, _accept_secret)]


def _secrets(text: str) -> Verdict:
    findings: list[_Finding] = []
    truncated = False
    scanned = _Text(text)
    for start, end, value, match in scanned.scan(_SECRETS, _accept_secret):
        if len(findings) == MAX_FINDINGS:
            truncated = True
            break
        kind = match.lastgroup
        # A key block's header is no secret and its tail is base64 padding: show nothing.
        shown = None if kind == "private_key" else _ending(value)
        findings.append(_Finding(kind, start, end, shown))
    return _report(
        "secrets",
        findings,
        _SECRET_LABELS,
        things="secrets",
        clear="no secrets found",
        truncated=truncated,
        gave_up="look-alikes of keys" if scanned.gave_up else None,
    )


# Prompt injection -------------------------------------------------------------------

# Between words: any run of whitespace, Unicode spaces included.
_GAP = r"[\s\p{Z}]+"
_VERBS_OF_OVERRIDE = r"(?:ignore|disregard|forget|override|bypass|skip)"
_EARLIER = r"(?:previous|prior|above|earlier|preceding|foregoing|original|initial)"
_ORDERS = (
    r"(?:instructions?|prompts?|directions?|directives?|rules|guidelines|messages?"
    r"|context|commands?)"
)
_PROTECTED = (
    r"(?:system prompt|system message|system instructions|developer message"
    r"|hidden instructions|programming|guardrails"
    r"|(?:safety|content) (?:rules|guidelines|filters?|restrictions|polic(?:y|ies)))"
)
# "DAN" ("do anything now") only in capitals: "you are now Dan's manager" is no attack.
_DAN = r"(?-i:DAN)"
_LIMITS = r"(?:restrictions|rules|guidelines|limitations|limits|filters)"
# The built-in list: (kind, what it tries, RE2 with spaces where any gap goes).
_INJECTION_PHRASES = [
    (
        "override_instructions",
        "tries to override the agent's instructions",
        rf"\b{_VERBS_OF_OVERRIDE} (?:all |any |everything )?(?:of )?"
        rf"(?:the |your |my |these |those )?{_EARLIER} {_ORDERS}\b",
    ),
    (
        "override_instructions",
        "tries to override the agent's instructions",
        rf"\b{_VERBS_OF_OVERRIDE} (?:all |any )?(?:of )?(?:the |your )?{_PROTECTED}\b",
    ),
    (
        "override_instructions",
        "tries to override the agent's instructions",
        r"\bforget (?:everything|all) (?:you (?:were|have been) told|above|before this)\b",
    ),
    (
        "reveal_system_prompt",
        "tries to make the agent reveal its instructions",
        r"\b(?:reveal|show|print|repeat|output|display|leak|dump|tell me|give me|what is|what are)"
        r" (?:me )?(?:your|the) (?:full |entire |exact |original |initial |hidden |secret )?"
        r"(?:system prompt|system message|system instructions|developer message"
        r"|hidden instructions|initial instructions|original instructions|secret instructions)\b",
    ),
    (
        "role_override",
        "tries to give the agent a role without its rules",
        rf"\byou are now (?:{_DAN}|an? (?:unrestricted|unfiltered|uncensored|jailbroken) "
        rf"(?:AI|assistant|model|chatbot)|in (?:developer|god|jailbreak|{_DAN}) mode)\b"
        rf"|\b(?:enable|enter|activate|switch to) (?:developer|god|jailbreak|{_DAN}) mode\b"
        rf"|\b(?:act as|pretend to be|pretend you are) {_DAN}\b|\b{_DAN} mode\b"
        rf"|\byou are no longer (?:bound|restricted|limited) by\b"
        rf"|\b(?:act|behave|respond|pretend) (?:as (?:if|though) |that )?you (?:have|had) no "
        rf"{_LIMITS}\b",
    ),
    (
        "override_instructions",
        "tries to override the agent's instructions",
        r"\bfrom now on,? you (?:will|must|shall|are to) (?:ignore|disregard|answer without"
        r"|respond without)\b|\[?\b(?:system|admin|developer) override\b",
    ),
]
_INJECTION_PURPOSES = {kind: purpose for kind, purpose, _ in _INJECTION_PHRASES}
_INJECTION_LABELS = {
    kind: _Label(f"a phrase that {purpose}", "prompt-injection phrase", "prompt-injection phrases")
    for kind, purpose in _INJECTION_PURPOSES.items()
}
_INJECTION_LABELS["extra_phrase"] = _Label(
    "a phrase this guardrail blocks", "blocked phrase", "blocked phrases"
)


def _injection_pattern(phrases: list[tuple[str, str]]) -> Any:
    grouped: dict[str, list[str]] = {}
    for kind, source in phrases:
        grouped.setdefault(kind, []).append(source.replace(" ", _GAP))
    return _fixed("(?i)" + "|".join(f"(?P<{kind}>{'|'.join(s)})" for kind, s in grouped.items()))


_INJECTION = _injection_pattern([(kind, source) for kind, _, source in _INJECTION_PHRASES])
# Zero-width and other format characters hide a phrase from the pattern
# ("ig\u200bnore previous instructions"); so do fullwidth and other compatibility
# forms. A text with any non-ASCII is checked once more without them.
_FORMAT_CHARACTERS = _fixed(r"\p{Cf}+")


@functools.lru_cache(maxsize=_CACHED_PATTERNS)
def _extra_phrases(phrases: tuple[str, ...]) -> Any:
    # Literal, case-insensitive, any whitespace between the words.
    sources = []
    for phrase in phrases:
        words = phrase.split()
        if words:
            sources.append(_GAP.join(re2.escape(word) for word in words))
    if not sources:
        return None
    return compile_pattern("(?i)(?:" + "|".join(sources) + ")")


def _prompt_injection(detector: guardrails_pb2.PromptInjectionDetector, text: str) -> Verdict:
    patterns = [_INJECTION]
    if detector.extra_phrases:
        try:
            extra = _extra_phrases(tuple(detector.extra_phrases))
        except ValueError as error:
            raise InvalidGuardrail("builtin.prompt_injection.extra_phrases", str(error)) from None
        if extra is not None:
            patterns.append(extra)
    findings, truncated = _injections(_Text(text), patterns)
    normalized = False
    if not findings and not text.isascii():
        plain = _FORMAT_CHARACTERS.sub("", unicodedata.normalize("NFKC", text))
        if plain != text:
            findings, truncated = _injections(_Text(plain), patterns)
            normalized = bool(findings)
    verdict = _report(
        "prompt_injection",
        findings,
        _INJECTION_LABELS,
        things="prompt-injection phrases",
        clear="no prompt-injection phrases found",
        quote=True,
        truncated=truncated,
    )
    info = {**verdict.info, "normalized": normalized}
    if normalized:
        # The positions are in the normalized text, not the one that was sent.
        note = " (after removing invisible characters and normalizing)"
        return Verdict(True, verdict.message + note, info)
    return Verdict(verdict.tripwire_triggered, verdict.message, info)


def _injections(scanned: _Text, patterns: list[Any]) -> tuple[list[_Finding], bool]:
    """The phrases found, and whether there were more than MAX_FINDINGS."""
    findings: list[_Finding] = []
    for pattern in patterns:
        for start, end, value, match in scanned.scan(pattern):
            if len(findings) == MAX_FINDINGS:
                return findings, True
            kind = match.lastgroup or "extra_phrase"
            # The phrase is shown: it is an attack, not a secret, and seeing it
            # tells a person whether the guardrail was right.
            findings.append(_Finding(kind, start, end, " ".join(value.split())))
    return findings, False


# Max length -----------------------------------------------------------------------


def _max_length(detector: guardrails_pb2.MaxLength, text: str) -> Verdict:
    limit = detector.max_chars
    if limit <= 0:
        raise InvalidGuardrail("builtin.max_length.max_chars", "must be more than 0")
    length = len(text)
    info = {"detector": "max_length", "length": length, "max_chars": limit}
    if length > limit:
        return Verdict(
            True, f"the text is {length:,} characters long, over the limit of {limit:,}", info
        )
    return Verdict(
        False, f"the text is {length:,} characters long, within the limit of {limit:,}", info
    )


# Blocked terms --------------------------------------------------------------------

_TERM_LABELS = {"term": _Label("the blocked term", "blocked term", "blocked terms", joiner=" ")}


def _is_word_char(char: str) -> bool:
    """Whether `char` joins the characters around it into one word. Scripts written
    without spaces (Chinese, Japanese, Thai) have no word boundaries to find, so
    their characters never do."""
    if not _is_word(char):
        return False
    code = ord(char)
    return not (0x0E00 <= code <= 0x0EFF or 0x3040 <= code <= 0x9FFF or 0xF900 <= code <= 0xFAFF)


# What may stand before a term that starts a word: the text's start, a character
# that is no word character, or one of a script written without spaces.
_TERM_START = r"(?:^|[^\pL\pN_]|[\x{0E00}-\x{0EFF}\x{3040}-\x{9FFF}\x{F900}-\x{FAFF}])"


@functools.lru_cache(maxsize=_CACHED_PATTERNS)
def _terms_pattern(terms: tuple[str, ...], case_sensitive: bool) -> Any:
    """Group 1: terms that start a word, found only where a word starts, so "ass"
    in "class" is not even a candidate. Group 2: the rest ("@admin")."""
    # Longest first: at one position "foo bar" wins over "foo".
    ordered = sorted(set(terms), key=len, reverse=True)
    starting = [re2.escape(term) for term in ordered if _is_word_char(term[0])]
    other = [re2.escape(term) for term in ordered if not _is_word_char(term[0])]
    groups = []
    if starting:
        groups.append(f"{_TERM_START}({'|'.join(starting)})")
    if other:
        groups.append(f"({'|'.join(other)})")
    source = "|".join(groups)
    return compile_pattern(source if case_sensitive else f"(?i)(?:{source})")


def _accept_term(candidate: str, before: str, after: str, match: Any) -> tuple[int, int] | None:
    # The character before a word-starting term is part of the match; the term
    # is what follows it.
    head = 0 if match.start(1) in (-1, match.start()) else 1
    # Whole words: "ass" is not in "assume". An end that is no word character
    # ("c++") needs no boundary after it.
    if _is_word_char(candidate[-1]) and _is_word_char(after[:1]):
        return None
    return head, len(candidate)


def _blocked_terms(detector: guardrails_pb2.BlockedTerms, text: str) -> Verdict:
    terms = tuple(term for term in detector.terms if term)
    if not terms:
        raise InvalidGuardrail("builtin.blocked_terms.terms", "name at least one term")
    try:
        pattern = _terms_pattern(terms, detector.case_sensitive)
    except ValueError:
        raise InvalidGuardrail(
            "builtin.blocked_terms.terms", "too many or too long terms to check at once"
        ) from None
    # Report a term as it was configured, not as the text spelled it.
    spelled = {term if detector.case_sensitive else term.casefold(): term for term in terms}
    findings: list[_Finding] = []
    counts: dict[str, int] = {}
    truncated = False
    scanned = _Text(text)
    for start, end, value, _ in scanned.scan(pattern, _accept_term):
        if len(findings) == MAX_FINDINGS:
            truncated = True
            break
        term = spelled.get(value if detector.case_sensitive else value.casefold(), value)
        counts[term] = counts.get(term, 0) + 1
        findings.append(_Finding("term", start, end, term))
    verdict = _report(
        "blocked_terms",
        findings,
        _TERM_LABELS,
        things="blocked terms",
        clear="no blocked terms found",
        quote=True,
        truncated=truncated,
        gave_up="matches inside longer words" if scanned.gave_up else None,
    )
    info = {**verdict.info, "terms": counts}
    if len(findings) > 1:
        tally = ", ".join(
            f"{quoted(term, 40)} {'once' if n == 1 else f'{n} times'}" for term, n in counts.items()
        )
        first = _TERM_LABELS["term"].describe(findings[0], quote=True)
        more = "+" if truncated or scanned.gave_up else ""
        message = f"found {len(findings)}{more} blocked terms ({tally}); the first is {first}"
        return Verdict(True, message, info)
    return Verdict(verdict.tripwire_triggered, verdict.message, info)


# JSON Schema -----------------------------------------------------------------------

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@functools.lru_cache(maxsize=_CACHED_PATTERNS)
def _schema_pattern(pattern: str) -> Any:
    return compile_pattern(pattern)


def _search(pattern: str, text: str) -> bool:
    return _schema_pattern(pattern).search(text) is not None


# jsonschema runs `pattern` and `patternProperties` (and, through them,
# `additionalProperties` and `unevaluatedProperties`) on Python's re, where a
# pattern RE2 accepts, such as (a+)+$, can take exponential time. These are the
# same keywords on RE2; the rest are jsonschema's.


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield jsonschema.ValidationError(f"does not match {pattern!r}")


def _pattern_properties(
    validator: Any, patterns: dict[str, Any], instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    for pattern, subschema in patterns.items():
        for key, value in instance.items():
            if _search(pattern, key):
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _additional_keys(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    return [
        key
        for key in instance
        if key not in properties and not any(_search(pattern, key) for pattern in patterns)
    ]


def _additional_properties(
    validator: Any, additional: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    extras = _additional_keys(instance, schema)
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        yield jsonschema.ValidationError(f"unexpected properties: {', '.join(map(repr, extras))}")


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> set[str]:
    """Keys `schema` evaluates, as jsonschema's find_evaluated_property_keys_by_schema
    finds them, with patternProperties on RE2."""
    if validator.is_type(schema, "boolean"):
        return set()
    keys: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        reference = schema.get(keyword)
        if reference is not None:
            resolved = validator._resolver.lookup(reference)
            keys |= _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
            )
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        subschema = schema.get(keyword)
        if subschema is not None:
            keys |= {
                key
                for key, value in instance.items()
                if next(validator.descend(value, subschema), None) is None
            }
    for pattern in schema.get("patternProperties", {}):
        keys |= {key for key in instance if _search(pattern, key)}
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if next(validator.descend(instance, subschema), None) is None:
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _unevaluated_properties(
    validator: Any, unevaluated: Any, instance: Any, schema: Any
) -> Iterator[Any]:
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    failing = [
        key
        for key in instance
        if key not in evaluated
        and next(validator.descend(instance[key], unevaluated, path=key), None) is not None
    ]
    if failing:
        yield jsonschema.ValidationError(
            f"unevaluated properties not allowed: {', '.join(map(repr, failing))}"
        )


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    validators={
        "pattern": _pattern,
        "patternProperties": _pattern_properties,
        "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated_properties,
    },
)

# Checking the schema itself: "format": "regex" in the meta-schema judged by RE2
# (jsonschema would compile with re, and accept what RE2 cannot run).
_SCHEMA_FORMATS = jsonschema.FormatChecker(formats=())


@_SCHEMA_FORMATS.checks("regex", raises=ValueError)
def _is_re2(instance: object) -> bool:
    if isinstance(instance, str):
        _schema_pattern(instance)
    return True


def _integral(value: Any) -> Any:
    """The schema with whole numbers as ints: a Struct holds every number as a
    double, and a message should say `minimum` (0), not (0.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_integral(item) for item in value]
    return value


def schema_validator(schema: dict[str, Any]) -> Any:
    """A Draft 2020-12 validator for a user's schema: patterns on RE2, and no $ref
    followed outside the schema (the default would fetch any URL it names)."""
    return _Validator(schema, registry=referencing.Registry())


@functools.lru_cache(maxsize=_CACHED_PATTERNS)
def _schema_validator(serialized: bytes) -> Any:
    struct = struct_pb2.Struct()
    struct.ParseFromString(serialized)
    schema = _integral(json_format.MessageToDict(struct))
    dialect = schema.get("$schema", SCHEMA_DIALECT)
    if not isinstance(dialect, str) or dialect.rstrip("#") != SCHEMA_DIALECT:
        raise InvalidGuardrail(
            "builtin.json_schema.schema", f"must be a Draft 2020-12 JSON Schema ({SCHEMA_DIALECT})"
        )
    try:
        jsonschema.Draft202012Validator.check_schema(schema, format_checker=_SCHEMA_FORMATS)
    except jsonschema.SchemaError as error:
        raise InvalidGuardrail(
            "builtin.json_schema.schema", f"not a valid JSON Schema: {error.message[:200]}"
        ) from None
    # No remote references: jsonschema's default registry fetches a $ref URL
    # over HTTP, from this process, to wherever the schema points.
    return _Validator(schema, registry=referencing.Registry())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_pointer(path: Any) -> str:
    parts = [str(part).replace("~", "~0").replace("/", "~1") for part in path]
    return "/" + "/".join(parts) if parts else "the top level"


# How many errors are weighed to name the most relevant one.
_ERRORS_WEIGHED = 100


def _json_schema(detector: guardrails_pb2.JsonSchemaConformance, text: str) -> Verdict:
    if not detector.HasField("schema"):
        raise InvalidGuardrail("builtin.json_schema.schema", "a JSON Schema is required")
    validator = _schema_validator(detector.schema.SerializeToString(deterministic=True))
    info: dict[str, Any] = {"detector": "json_schema"}
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        info["json"] = False
        where = f" (line {error.lineno}, column {error.colno})"
        return Verdict(True, f"the text is not JSON: {error.msg}{where}", info)
    except (ValueError, RecursionError) as error:
        # NaN, a number of thousands of digits, nesting deeper than the parser goes.
        info["json"] = False
        reason = "it nests too deeply" if isinstance(error, RecursionError) else str(error)[:120]
        return Verdict(True, f"the text is not JSON: {reason}", info)
    info["json"] = True
    try:
        errors = list(itertools.islice(validator.iter_errors(value), _ERRORS_WEIGHED))
    except referencing.exceptions.Unresolvable as error:
        raise InvalidGuardrail(
            "builtin.json_schema.schema",
            f"a $ref cannot be resolved ({quoted(str(error.ref), 120)}); "
            "only references inside the schema are followed",
        ) from None
    except RecursionError:
        # A schema that refers to itself without end, or a value nested too
        # deeply to follow: it is not shown to conform, so it does not pass.
        info["valid"] = False
        return Verdict(
            True, "the JSON could not be checked: it or the schema nests too deeply", info
        )
    if not errors:
        info["valid"] = True
        return Verdict(False, "the JSON matches the schema", info)
    best = jsonschema.exceptions.best_match(errors)
    path = _json_pointer(best.absolute_path)
    info.update(valid=False, errors=len(errors), path=path, keyword=best.validator)
    # Named by the keyword and the schema's value, never the offending value:
    # jsonschema's own messages quote it, and it may be a secret.
    if best.validator is None:  # the schema `false`: nothing is allowed there
        reason = "the schema allows no value there"
    else:
        # Compact JSON escapes every control character: it cannot break a line.
        expected = json.dumps(best.validator_value, separators=(",", ":"))
        if len(expected) > 120:
            expected = expected[:120] + "..."
        reason = f"it fails {best.validator!r} ({expected})"
    message = f"the JSON does not match the schema at {path}: {reason}"
    if len(errors) > 1:
        more = f"{len(errors)}+" if len(errors) == _ERRORS_WEIGHED else str(len(errors))
        message += f"; {more} errors in all"
    return Verdict(True, message, info)


# --- Streaming windows ------------------------------------------------------------
#
# A run streams its answer through a gate (services/runner/guarding.py): text is
# sent only once every output guardrail has seen it with enough text after it to
# decide. For a check whose findings are at most W characters wide, holding back
# the last W characters is enough: a finding that is not complete yet starts in
# what is held back. A check that needs the whole text (ACTION_ALLOW, a maximum
# length, a JSON Schema) or an unbounded pattern has no window: its agent's text
# is held until the output is final.

# Keys, tokens and emails are unbroken runs of any length: the gate holds back
# the trailing run whole (up to its own bound), so these windows cover the rest.
_PII_WINDOW = 48  # a card with separators (23), an IBAN (44), an international phone
_SECRETS_WINDOW = 96  # `aws_secret_access_key = "<40>"`, a private key header
# What a finding still being written looks like at the end of the text, for the
# detectors whose findings have a recognisable start: only from there on is text
# held back (prose flows on at once). Anything else is held by the window.
_TAILS = {
    "pii": _fixed(
        # A card, phone or IBAN being written: digits and separators, or two
        # letters and a digit (DE89 ...).
        r"(?:[+(]?\d[\d ()./\-]*|\b[A-Za-z]{2}\d[\dA-Za-z ]*)$"
    ),
    "secrets": _fixed(
        r"(?i:\bbearer(?:[ \t]+[A-Za-z0-9\-._~+/]*=*)?"
        r"|\b(?:aws_?secret|secret_?access)\w*[\"']?\s*(?:=>?|:)?\s*[\"']?[A-Za-z0-9/+]*"
        r"|-----BEGIN[A-Z0-9 ]*-*)$"
    ),
}
_INJECTION_WINDOW = 200  # the longest built-in phrase with a few spaces in its gaps
# Characters a detector looks at beside a match (a word boundary, digits after a card).
_CONTEXT = 4


def stream_window(guardrail: guardrails_pb2.Guardrail) -> int | None:
    """How many trailing characters of a streamed text this check needs held back
    before what precedes them may be sent; None when it needs the whole text."""
    kind = guardrail.WhichOneof("check")
    if kind == "regex":
        if guardrail.regex.action != guardrails_pb2.RegexCheck.ACTION_BLOCK:
            return None
        width = pattern_width(guardrail.regex.pattern)
        return None if width is None else width + _CONTEXT
    if kind != "builtin":
        return None
    builtin = guardrail.builtin
    detector = builtin.WhichOneof("detector")
    if detector == "pii":
        return _PII_WINDOW
    if detector == "secrets":
        return _SECRETS_WINDOW
    if detector == "prompt_injection":
        extra = max((2 * len(p) for p in builtin.prompt_injection.extra_phrases), default=0)
        return max(_INJECTION_WINDOW, extra + _CONTEXT)
    if detector == "blocked_terms":
        return max((len(t) for t in builtin.blocked_terms.terms), default=0) + _CONTEXT
    return None


def stream_hold(guardrail: guardrails_pb2.Guardrail, window: int, tail: str) -> int:
    """How many characters at the end of `tail` (the last `window` characters of a
    streamed text) this check needs held back now: from where a finding may be
    being written, for detectors that can tell; else the whole window."""
    if guardrail.WhichOneof("check") == "builtin":
        pattern = _TAILS.get(guardrail.builtin.WhichOneof("detector") or "")
        if pattern is not None:
            found = pattern.search(tail)
            return len(tail) - found.start() if found else 0
    return window


# At most this wide, or the pattern counts as unbounded: a window this long would
# hold back most answers anyway.
_MAX_PATTERN_WIDTH = 4096
_PATTERN_ESCAPE_WIDTH = {
    # Zero-width assertions.
    "b": 0, "B": 0, "A": 0, "z": 0,
}  # fmt: skip


class _Unbounded(Exception):
    pass


def pattern_width(pattern: str) -> int | None:
    """The most characters a match of this RE2 pattern can span, or None when that
    is unbounded (`*`, `+`, `{n,}`) or not sure (anything this reading does not know).

    A conservative reading of RE2's syntax that never matches anything: it only
    counts, so an unknown construct makes it answer None, never a smaller width.
    """
    try:
        width, end = _alternation(pattern, 0)
    except (_Unbounded, IndexError, ValueError):
        return None
    if end != len(pattern) or width > _MAX_PATTERN_WIDTH:
        return None
    return width


def _alternation(p: str, i: int) -> tuple[int, int]:
    widest = 0
    while True:
        width, i = _sequence(p, i)
        widest = max(widest, width)
        if i < len(p) and p[i] == "|":
            i += 1
            continue
        return widest, i


def _sequence(p: str, i: int) -> tuple[int, int]:
    total = 0
    while i < len(p) and p[i] not in "|)":
        width, i = _atom(p, i)
        times, i = _repetition(p, i)
        total += width * times
        if total > _MAX_PATTERN_WIDTH:
            raise _Unbounded
    return total, i


_REPEAT = _fixed(r"^\{(\d+)(,(\d*))?\}")


def _repetition(p: str, i: int) -> tuple[int, int]:
    """How many times the atom before `i` may repeat at most, and where after it."""
    if i >= len(p):
        return 1, i
    if p[i] in "*+":
        raise _Unbounded
    if p[i] == "?":
        times, i = 1, i + 1
    elif p[i] == "{" and (counted := _REPEAT.search(p[i:])):
        if counted.group(2) is not None and not counted.group(3):
            raise _Unbounded
        times = int(counted.group(3) or counted.group(1))
        i += counted.end()
    else:
        return 1, i
    if i < len(p) and p[i] == "?":  # lazy
        i += 1
    if i < len(p) and p[i] in "*+?{":
        raise _Unbounded  # stacked repetition: not worth reading
    return times, i


def _atom(p: str, i: int) -> tuple[int, int]:
    char = p[i]
    if char in "^$":
        return 0, i + 1
    if char == ".":
        return 1, i + 1
    if char == "[":
        return 1, _class_end(p, i + 1)
    if char == "\\":
        return _escape(p, i + 1)
    if char == "(":
        if p.startswith("(?", i):
            j = i + 2
            if p.startswith("P<", j) or p.startswith("<", j):
                j = p.index(">", j) + 1
            else:
                while p[j] not in ":)":
                    if not (p[j].isalpha() or p[j] == "-"):
                        raise ValueError(p[j])
                    j += 1
                if p[j] == ")":  # flags only: (?i)
                    return 0, j + 1
                j += 1
        else:
            j = i + 1
        width, j = _alternation(p, j)
        if p[j] != ")":
            raise ValueError(")")
        return width, j + 1
    if char in "*+?{)|":
        raise ValueError(char)
    return 1, i + 1


def _class_end(p: str, i: int) -> int:
    """Where the character class opened before `i` ends."""
    if p[i] == "^":
        i += 1
    if p[i] == "]":
        i += 1
    while p[i] != "]":
        if p[i] == "\\":
            i = _escape(p, i + 1)[1]
        elif p.startswith("[:", i):
            i = p.index(":]", i + 2) + 2
        else:
            i += 1
    return i + 1


def _escape(p: str, i: int) -> tuple[int, int]:
    """The width of the escape whose backslash is just before `i`, and its end."""
    char = p[i]
    if char in _PATTERN_ESCAPE_WIDTH:
        return _PATTERN_ESCAPE_WIDTH[char], i + 1
    if char == "Q":  # \Q...\E quotes literally
        end = p.find("\\E", i + 1)
        if end == -1:
            return len(p) - i - 1, len(p)
        return end - i - 1, end + 2
    if char in "pP":
        if p[i + 1] == "{":
            return 1, p.index("}", i + 1) + 1
        return 1, i + 2
    if char == "x":
        if p[i + 1] == "{":
            return 1, p.index("}", i + 1) + 1
        return 1, i + 3
    if char.isdigit() and char != "0":
        raise ValueError("backreference")  # RE2 has none; do not guess
    if char == "0":  # octal \0oo
        j = i + 1
        while j < len(p) and j < i + 3 and p[j] in "01234567":
            j += 1
        return 1, j
    return 1, i + 1  # \d \w \s \n \. and the like: one character (\C: one byte)


def result_of(name: str, verdict: Verdict) -> guardrails_pb2.GuardrailResult:
    """A verdict as the contract's GuardrailResult (what runs record and the
    guardrails service answers)."""
    result = guardrails_pb2.GuardrailResult(
        name=name, tripwire_triggered=verdict.tripwire_triggered, message=verdict.message
    )
    json_format.ParseDict(verdict.info, result.info)
    return result
