"""Every contract, by a stable name: the JSON Schema snapshots and the compatibility test iterate this."""

from __future__ import annotations

from typing import Any

from contracts import catalog, dlq, fallback, hardware, health, local_models, provisioner, router, rpc
from contracts.envelope import Contract


def is_message(cls: Any) -> bool:
    """A concrete contract class: not a generic base (`RpcRequest`) nor one of its parametrisations."""
    meta = getattr(cls, "__pydantic_generic_metadata__", None) or {}
    return isinstance(cls, type) and issubclass(cls, Contract) and not meta.get("origin") and not meta.get("parameters")


ALL_CONTRACTS: dict[str, type[Contract]] = {
    f"{module.__name__.rsplit('.', 1)[-1]}.{cls.__name__}": cls
    for module in (health, dlq, rpc, catalog, provisioner, hardware, local_models, router, fallback)
    for cls in vars(module).values()
    if is_message(cls) and cls.__module__ == module.__name__
}
