"""Payloads for fuzzing the bus: random bytes, and near-valid JSON built from a contract's own schema (its field
names with wrong types, missing required fields, extra fields, huge and unicode strings), never a valid message."""

from __future__ import annotations

import json
import random
import warnings
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.envelope import Contract

_JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
JSON_VALUES = st.recursive(
    _JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip
EXOTIC = [
    "",
    "\u0000",
    "\ud7ff\ufeff\u202e",
    "名前🙂" * 50,
    "x" * 60_000,  # a huge string, still far below NATS' 1 MiB payload limit
    -(2**70),
    2**63,
    1e308,
    [],
    {},
    [[[[[]]]]],
    {"$ref": "#"},
    True,
    None,
]


def value_pool(size: int = 400, seed: int = 0) -> list[Any]:
    """JSON values drawn by hypothesis (one `@given` run filling a list), plus the exotic ones above."""
    pool: list[Any] = []

    @settings(max_examples=size, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(JSON_VALUES)
    def draw(value: Any) -> None:
        pool.append(value)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        draw()
    random.Random(seed).shuffle(pool)
    return pool + EXOTIC


class Fuzzer:
    """Seeded, so a failing run can be replayed; `payload(contract)` never returns a message the contract accepts."""

    def __init__(self, seed: int, pool: list[Any]) -> None:
        self.rng = random.Random(seed)
        self.pool = pool
        self.rejected = 0  # near-valid candidates that turned out valid and were drawn again

    def _near_valid(self, contract: type[Contract]) -> bytes:
        schema = contract.model_json_schema()
        fields = list(schema.get("properties", {}))
        required = list(schema.get("required", []))
        body: dict[str, Any] = {name: self.rng.choice(self.pool) for name in fields if self.rng.random() < 0.7}
        if required and self.rng.random() < 0.5:
            body.pop(self.rng.choice(required), None)  # a required field missing
        if self.rng.random() < 0.5:
            body[self.rng.choice(["extra", "ünïcode", "__proto__", "x" * 300])] = self.rng.choice(self.pool)
        if self.rng.random() < 0.1:
            return json.dumps(self.rng.choice(self.pool)).encode()  # valid JSON, not an object
        return json.dumps(body, ensure_ascii=self.rng.random() < 0.5).encode()

    def _bytes(self) -> bytes:
        size = self.rng.choice([0, 1, 7, 64, 1024, 20_000])
        return self.rng.randbytes(size)

    def anything(self, contract: type[Contract]) -> bytes:
        """Random bytes or near-valid JSON, valid or not (for read-only subjects such as health)."""
        return self._bytes() if self.rng.random() < 0.3 else self._near_valid(contract)

    def payload(self, contract: type[Contract]) -> bytes:
        for _ in range(100):
            data = self._bytes() if self.rng.random() < 0.3 else self._near_valid(contract)
            try:
                contract.model_validate_json(data or b"{}")  # the rpc seam reads an empty body as {}
            except ValidationError:
                return data
            self.rejected += 1
        raise AssertionError(f"could not make an invalid {contract.__name__} in 100 tries")
