"""Subject grammar: evt.<producer>.<entity>.<past-tense>.vN, cmd.<owner>.<verb>.vN, rpc.<owner>.<verb>.vN, dlq.<...>."""

from __future__ import annotations

import re

EVENTS_STREAM = "EVENTS"
COMMANDS_STREAM = "COMMANDS"
DLQ_STREAM = "DLQ"

#: stream name -> the subjects it captures. `rpc.*` is deliberately captured by no stream.
STREAMS: dict[str, tuple[str, ...]] = {
    EVENTS_STREAM: ("evt.>",),
    COMMANDS_STREAM: ("cmd.>",),
    DLQ_STREAM: ("dlq.>",),
}

_TOKEN = r"[a-z][a-z0-9_-]*"
_TEMPLATE = r"\{[a-z_]+\}"
_PART = rf"(?:{_TOKEN}|{_TEMPLATE})"
_GRAMMAR = re.compile(
    rf"^(?:evt\.{_PART}(?:\.{_PART}){{1,3}}\.v[1-9][0-9]*"
    rf"|cmd\.{_PART}\.{_PART}(?:\.{_PART})?\.v[1-9][0-9]*"
    rf"|rpc\.{_PART}(?:\.{_PART}){{1,2}}\.v[1-9][0-9]*)$"
)


class SubjectError(ValueError):
    """A subject string that does not follow the grammar."""


def validate_subject(subject: str) -> str:
    """Return `subject` if it follows the grammar (templates like `{service}` allowed), else raise."""
    if not _GRAMMAR.match(subject):
        raise SubjectError(
            f"subject {subject!r} does not follow evt.<producer>.<entity>.<verb>.vN, "
            "cmd.<owner>.<verb>.vN or rpc.<owner>.<verb>.vN"
        )
    return subject


def fill(template: str, **parts: str) -> str:
    """Fill a subject template (`rpc.{service}.health.v1`) with concrete, single-token parts."""
    for name, value in parts.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", value):
            raise SubjectError(f"subject part {name}={value!r} must be one token of [A-Za-z0-9_-]")
    subject = template.format(**parts)
    if "{" in subject:
        raise SubjectError(f"subject template {template!r} has unfilled parts")
    return subject


def dlq_subject(subject: str) -> str:
    """Where a message on `subject` goes when it can never be processed."""
    return f"dlq.{subject}"


def major_version(subject: str) -> int:
    return int(subject.rsplit(".v", 1)[1])


def stream_for(subject: str) -> str | None:
    """The stream that captures `subject`, or None for request/reply subjects."""
    head = subject.split(".", 1)[0]
    return {"evt": EVENTS_STREAM, "cmd": COMMANDS_STREAM, "dlq": DLQ_STREAM}.get(head)
