"""Reading a process's Prometheus `/metrics` the way Prometheus does: the text format parsed by prometheus_client."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.embedded import free_port

__all__ = ["Sample", "Samples", "free_port", "parse", "scrape", "scrape_async"]


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: `name{labels} value`."""

    name: str
    labels: dict[str, str]
    value: float


class Samples(list[Sample]):
    """Every sample of one scrape, with look-ups by series name and (a subset of) labels."""

    def find(self, name: str, **labels: str) -> list[Sample]:
        """The samples named `name` whose labels include every `labels` given (Python names: `http_route=...`)."""
        return [s for s in self if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]

    def value(self, name: str, **labels: str) -> float:
        """The sum over the matching samples (0.0 when none match): a counter across the series it is split into."""
        return sum(s.value for s in self.find(name, **labels))

    def names(self) -> set[str]:
        return {s.name for s in self}

    def label_values(self, name: str, label: str) -> set[str]:
        return {s.labels[label] for s in self.find(name) if label in s.labels}


def parse(text: str) -> Samples:
    return Samples(_samples(text_string_to_metric_families(text)))


def _samples(families: Iterable[object]) -> Iterable[Sample]:
    for family in families:
        for s in family.samples:  # type: ignore[attr-defined]
            yield Sample(s.name, dict(s.labels), float(s.value))


def scrape(url: str, timeout_s: float = 5.0) -> Samples:
    """GET `url` (a `/metrics` endpoint) and parse it; a non-200 answer raises."""
    reply = httpx.get(url, timeout=timeout_s)
    reply.raise_for_status()
    return parse(reply.text)


async def scrape_async(url: str, timeout_s: float = 5.0) -> Samples:
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        reply = await client.get(url)
    reply.raise_for_status()
    return parse(reply.text)
