"""Every contract, by a stable name: the JSON Schema snapshots and the compatibility test iterate this."""

from __future__ import annotations

from contracts import catalog, dlq, fallback, hardware, health, provisioner, router
from contracts.envelope import Contract

ALL_CONTRACTS: dict[str, type[Contract]] = {
    f"{module.__name__.rsplit('.', 1)[-1]}.{cls.__name__}": cls
    for module in (health, dlq, catalog, provisioner, hardware, router, fallback)
    for cls in vars(module).values()
    if isinstance(cls, type) and issubclass(cls, Contract) and cls.__module__ == module.__name__
}
