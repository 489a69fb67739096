"""Catalog bus handlers: decode, call the domain, persist, publish."""

from __future__ import annotations

from faststream.nats import NatsBroker


def register(broker: NatsBroker) -> None:
    """The catalog's request/reply handlers (resolve, import) are added with the catalog capability."""
