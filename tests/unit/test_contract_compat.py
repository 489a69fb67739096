"""The contract compatibility gate: committed JSON Schema snapshots vs the code, and the comparer it relies on."""

from __future__ import annotations

import importlib
import json
import pkgutil
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, StringConstraints

import contracts
from contracts.envelope import Contract
from contracts.registry import ALL_CONTRACTS, is_message
from scripts.schema_compat import Break, breaking_changes
from scripts.snapshot_contracts import RUN_HINT, SCHEMA_DIR, compare, contract_schema, main, render, write

pytestmark = pytest.mark.unit


# --- the gate over the committed snapshots -------------------------------------------------------------------


@pytest.mark.parametrize("key", sorted(ALL_CONTRACTS))
def test_contract_matches_its_committed_snapshot_compatibly(key: str) -> None:
    path = SCHEMA_DIR / f"{key}.json"
    assert path.is_file(), f"contract {key} has no committed JSON Schema snapshot; {RUN_HINT}"
    old = json.loads(path.read_text(encoding="utf-8"))
    breaks = breaking_changes(old, contract_schema(ALL_CONTRACTS[key]))
    assert not breaks, (
        f"breaking change to {key} (see docs/contracts.md: add a new class on a `.v2` subject instead):\n"
        + "\n".join(f"  {b}" for b in breaks)
    )


def test_no_snapshot_outlives_its_contract() -> None:
    orphans = sorted({p.stem for p in SCHEMA_DIR.glob("*.json")} - set(ALL_CONTRACTS))
    assert not orphans, f"snapshots without a contract (removing a contract is breaking): {orphans}"


def test_registry_holds_every_contract_class_of_the_package() -> None:
    found: set[type[Contract]] = set()
    for info in pkgutil.iter_modules(contracts.__path__):
        module = importlib.import_module(f"contracts.{info.name}")
        found |= {obj for obj in vars(module).values() if is_message(obj) and obj.__module__ == module.__name__}
    found -= {Contract}
    from contracts.envelope import Envelope

    found -= {Envelope}
    missing = sorted(f"{c.__module__}.{c.__name__}" for c in found - set(ALL_CONTRACTS.values()))
    assert not missing, f"contracts not in contracts.registry.ALL_CONTRACTS (add their module there): {missing}"


# --- the comparer, on synthetic old/new pairs ----------------------------------------------------------------


def schema_of(model: type[BaseModel], subject: str = "") -> dict[str, object]:
    schema: dict[str, object] = model.model_json_schema(mode="validation")
    if subject:
        schema["x-modelfleet-subject"] = subject
    return schema


def kinds(old: type[BaseModel], new: type[BaseModel]) -> list[tuple[str, str]]:
    return [(b.path, b.kind) for b in breaking_changes(schema_of(old), schema_of(new))]


class Color(StrEnum):
    RED = "red"
    GREEN = "green"


class FewerColors(StrEnum):
    RED = "red"


class MoreColors(StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


def test_removed_field_breaks() -> None:
    class Old(BaseModel):
        a: int
        b: str = ""

    class New(BaseModel):
        a: int

    assert kinds(Old, New) == [("b", "removed field")]


def test_optional_field_made_required_breaks() -> None:
    class Old(BaseModel):
        a: int = 0

    class New(BaseModel):
        a: int

    assert kinds(Old, New) == [("a", "newly required field")]


def test_new_required_field_breaks() -> None:
    class Old(BaseModel):
        a: int

    class New(BaseModel):
        a: int
        b: str

    breaks = breaking_changes(schema_of(Old), schema_of(New))
    assert [(b.path, b.kind) for b in breaks] == [("b", "newly required field")]
    assert "did not exist" in breaks[0].detail


@pytest.mark.parametrize(
    ("old_type", "new_type"),
    [(int, str), (str, int), (float, int), (bool, str), (list[int], int), (int | None, int), (list[int], list[str])],
)
def test_changed_or_narrowed_type_breaks(old_type: type, new_type: type) -> None:
    class Old(BaseModel):
        a: old_type  # type: ignore[valid-type]

    class New(BaseModel):
        a: new_type  # type: ignore[valid-type]

    found = kinds(Old, New)
    assert found, f"{old_type} -> {new_type} should break"
    assert {k for _, k in found} == {"type changed"}


def test_enum_value_removed_breaks() -> None:
    class Old(BaseModel):
        c: Color

    class New(BaseModel):
        c: FewerColors

    breaks = breaking_changes(schema_of(Old), schema_of(New))
    assert [(b.path, b.kind) for b in breaks] == [("c", "type changed")]
    assert '"green"' in breaks[0].detail


def test_literal_value_removed_breaks() -> None:
    class Old(BaseModel):
        mode: Literal["a", "b"]

    class New(BaseModel):
        mode: Literal["a"]

    assert kinds(Old, New) == [("mode", "type changed")]


def test_string_format_added_breaks() -> None:
    import uuid

    class Old(BaseModel):
        a: str

    class New(BaseModel):
        a: uuid.UUID

    assert kinds(Old, New) == [("a", "type changed")]


def test_nested_model_changes_are_found_through_defs() -> None:
    class InnerOld(BaseModel):
        name: str
        size: int = 0

    class InnerNew(BaseModel):
        name: int

    class Old(BaseModel):
        items: list[InnerOld]
        one: InnerOld | None = None

    class New(BaseModel):
        items: list[InnerNew]
        one: InnerNew | None = None

    assert sorted(kinds(Old, New)) == [
        ("items[].name", "type changed"),
        ("items[].size", "removed field"),
        ("one.name", "type changed"),
        ("one.size", "removed field"),
    ]


def test_dict_value_type_change_breaks() -> None:
    class Old(BaseModel):
        tags: dict[str, str]

    class New(BaseModel):
        tags: dict[str, int]

    assert kinds(Old, New) == [("tags.*", "type changed")]


@pytest.mark.parametrize(
    ("old_ann", "new_ann"),
    [
        (Annotated[str, StringConstraints(max_length=10)], Annotated[str, StringConstraints(max_length=5)]),
        (Annotated[str, StringConstraints(min_length=1)], Annotated[str, StringConstraints(min_length=2)]),
        (str, Annotated[str, StringConstraints(pattern="^[a-z]+$")]),
        (Annotated[int, Field(ge=0)], Annotated[int, Field(ge=1)]),
        (Annotated[int, Field(le=10)], Annotated[int, Field(lt=10)]),
        (Annotated[list[int], Field(max_length=8)], Annotated[list[int], Field(max_length=4)]),
    ],
)
def test_tightened_constraint_breaks(old_ann: object, new_ann: object) -> None:
    class Old(BaseModel):
        a: old_ann  # type: ignore[valid-type]

    class New(BaseModel):
        a: new_ann  # type: ignore[valid-type]

    assert kinds(Old, New) == [("a", "constraint tightened")]


def test_subject_change_breaks() -> None:
    class Msg(BaseModel):
        a: int

    breaks = breaking_changes(schema_of(Msg, "evt.x.thing.happened.v1"), schema_of(Msg, "evt.x.thing.happened.v2"))
    assert [b.kind for b in breaks] == ["subject changed"]


def test_additive_and_widening_changes_pass() -> None:
    class Inner(BaseModel):
        n: int

    class InnerMore(BaseModel):
        n: int
        label: str = "x"

    class Old(BaseModel):
        """Old docs."""

        a: int
        b: Annotated[str, StringConstraints(max_length=5)]
        c: Color
        d: int
        e: list[Inner]
        f: Annotated[int, Field(ge=1)]

    class New(BaseModel):
        """New docs, new titles and defaults are not a schema break."""

        a: int | None = Field(default=None, description="now optional")
        b: Annotated[str, StringConstraints(max_length=50)]
        c: MoreColors
        d: float
        e: list[InnerMore]
        f: Annotated[int, Field(ge=0)]
        g: str | None = None
        h: list[str] = Field(default_factory=list)

    assert breaking_changes(schema_of(Old), schema_of(New)) == []


def test_enum_widened_to_its_base_type_passes() -> None:
    class Old(BaseModel):
        c: Color

    class New(BaseModel):
        c: str

    assert kinds(Old, New) == []


def test_identical_real_contracts_have_no_breaks() -> None:
    for key, cls in ALL_CONTRACTS.items():
        assert breaking_changes(contract_schema(cls), contract_schema(cls)) == [], key


def test_break_names_its_path() -> None:
    assert str(Break("a.b", "removed field", "x")) == "a.b: removed field: x"


# --- the snapshot script ------------------------------------------------------------------------------------


class Sample(Contract):
    SUBJECT = "evt.sample.thing.happened.v1"
    a: int
    b: str = ""


class SampleRemovedField(Contract):
    SUBJECT = "evt.sample.thing.happened.v1"
    a: int


class SampleAdded(Contract):
    SUBJECT = "evt.sample.thing.happened.v1"
    a: int
    b: str = ""
    c: int | None = None


def test_render_is_stable_and_sorted() -> None:
    schema = contract_schema(Sample)
    text = render(schema)
    assert text == render(json.loads(text))
    assert text.endswith("}\n")
    assert list(json.loads(text)) == sorted(json.loads(text))


def test_write_then_compare_round_trips(tmp_path: Path) -> None:
    report = write({"sample.Sample": Sample}, tmp_path, accept_breaking=False)
    assert report.missing == ["sample.Sample"]
    assert json.loads((tmp_path / "sample.Sample.json").read_text())["x-modelfleet-subject"] == Sample.SUBJECT
    again = compare({"sample.Sample": Sample}, tmp_path)
    assert not again.failed and again.additive == []


def test_missing_snapshot_fails_with_the_hint(tmp_path: Path) -> None:
    report = compare({"sample.Sample": Sample}, tmp_path)
    assert report.failed
    assert any("scripts.snapshot_contracts" in line for line in report.lines())


def test_breaking_snapshot_is_not_overwritten_unless_accepted(tmp_path: Path) -> None:
    write({"sample.Sample": Sample}, tmp_path, accept_breaking=False)
    before = (tmp_path / "sample.Sample.json").read_text()
    report = write({"sample.Sample": SampleRemovedField}, tmp_path, accept_breaking=False)
    assert [b.kind for b in report.breaking["sample.Sample"]] == ["removed field"]
    assert (tmp_path / "sample.Sample.json").read_text() == before
    write({"sample.Sample": SampleRemovedField}, tmp_path, accept_breaking=True)
    assert compare({"sample.Sample": SampleRemovedField}, tmp_path).failed is False


def test_additive_change_passes_but_is_reported_stale(tmp_path: Path) -> None:
    write({"sample.Sample": Sample}, tmp_path, accept_breaking=False)
    report = compare({"sample.Sample": SampleAdded}, tmp_path)
    assert not report.failed
    assert report.additive == ["sample.Sample"]


def test_removed_contract_fails(tmp_path: Path) -> None:
    write({"sample.Sample": Sample}, tmp_path, accept_breaking=False)
    report = compare({}, tmp_path)
    assert report.removed == ["sample.Sample"] and report.failed


def test_check_mode_on_the_committed_snapshots_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--check"]) == 0, capsys.readouterr().err


class NodeOld(BaseModel):
    name: str
    children: list[NodeOld] = Field(default_factory=list)


class NodeNew(BaseModel):
    name: int
    children: list[NodeNew] = Field(default_factory=list)


def test_recursive_models_terminate_and_still_compare() -> None:
    assert kinds(NodeOld, NodeNew) == [("name", "type changed")]
    assert kinds(NodeOld, NodeOld) == []
