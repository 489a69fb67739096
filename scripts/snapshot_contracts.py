"""Writes the JSON Schema of every contract to `contracts/schemas/<key>.json`: the baseline the compat gate checks.

    python -m scripts.snapshot_contracts                    # write new and additively changed snapshots
    python -m scripts.snapshot_contracts --check            # exit 1 on a breaking change or a missing snapshot
    python -m scripts.snapshot_contracts --accept-breaking  # overwrite breaking snapshots too (deliberate act)

A breaking change is refused unless `--accept-breaking` is given: re-running the script must not silently
move the baseline the gate compares against (docs/contracts.md: add a `.v2` class instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.envelope import Contract
from scripts.schema_compat import SUBJECT_KEY, Break, breaking_changes

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "contracts" / "schemas"
RUN_HINT = "run `python -m scripts.snapshot_contracts` and commit contracts/schemas/"


def contract_schema(cls: type[Contract]) -> dict[str, Any]:
    """The validation-mode JSON Schema of `cls`, with its subject (if any) under `x-modelfleet-subject`."""
    schema: dict[str, Any] = cls.model_json_schema(mode="validation")
    if cls.SUBJECT:
        schema[SUBJECT_KEY] = cls.SUBJECT
    return schema


def render(schema: dict[str, Any]) -> str:
    """Stable text: sorted keys, two-space indent, one trailing newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@dataclass
class Report:
    """What differs between the committed snapshots and the code."""

    missing: list[str] = field(default_factory=list)  # contracts with no snapshot yet
    removed: list[str] = field(default_factory=list)  # snapshots whose contract is gone
    breaking: dict[str, list[Break]] = field(default_factory=dict)
    additive: list[str] = field(default_factory=list)  # differ, but compatibly: the snapshot is stale

    @property
    def failed(self) -> bool:
        return bool(self.missing or self.removed or self.breaking)

    def lines(self) -> list[str]:
        out = [f"{key}: no committed snapshot; {RUN_HINT}" for key in self.missing]
        out += [
            f"{key}: contract removed but its snapshot remains; keep the contract until no consumer reads it "
            f"(delete contracts/schemas/{key}.json only when it is truly retired)"
            for key in self.removed
        ]
        for key, breaks in self.breaking.items():
            out += [f"{key}: BREAKING {b}" for b in breaks]
        if self.breaking:
            out.append("a breaking change needs a new contract class on a `.v2` subject (docs/contracts.md)")
        out += [f"{key}: compatible change, snapshot is stale; {RUN_HINT}" for key in self.additive]
        return out


def compare(contracts: dict[str, type[Contract]], schema_dir: Path = SCHEMA_DIR) -> Report:
    """Compare every contract with its committed snapshot under `schema_dir`."""
    report = Report()
    committed = {p.stem: p for p in schema_dir.glob("*.json")} if schema_dir.is_dir() else {}
    for key in sorted(contracts):
        current = contract_schema(contracts[key])
        path = committed.get(key)
        if path is None:
            report.missing.append(key)
            continue
        old = json.loads(path.read_text(encoding="utf-8"))
        breaks = breaking_changes(old, current)
        if breaks:
            report.breaking[key] = breaks
        elif render(old) != render(current):
            report.additive.append(key)
    report.removed = sorted(set(committed) - set(contracts))
    return report


def write(contracts: dict[str, type[Contract]], schema_dir: Path, *, accept_breaking: bool) -> Report:
    """Write every snapshot that is missing or compatibly changed (breaking ones only when accepted)."""
    report = compare(contracts, schema_dir)
    schema_dir.mkdir(parents=True, exist_ok=True)
    for key in sorted(contracts):
        if key in report.breaking and not accept_breaking:
            continue
        target = schema_dir / f"{key}.json"
        text = render(contract_schema(contracts[key]))
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> int:
    from contracts.registry import ALL_CONTRACTS

    parser = argparse.ArgumentParser(prog="python -m scripts.snapshot_contracts", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="write nothing; exit 1 on breaking or missing snapshots")
    mode.add_argument("--accept-breaking", action="store_true", help="overwrite snapshots even on breaking changes")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="snapshot directory (default contracts/schemas)")
    args = parser.parse_args(argv)
    if args.check:
        report = compare(ALL_CONTRACTS, args.dir)
        for line in report.lines():
            print(line, file=sys.stderr)
        return 1 if report.failed else 0
    report = write(ALL_CONTRACTS, args.dir, accept_breaking=args.accept_breaking)
    for key, breaks in report.breaking.items():
        verdict = "OVERWRITTEN (accepted)" if args.accept_breaking else "NOT written"
        print(f"{key}: breaking change, {verdict}: " + "; ".join(map(str, breaks)), file=sys.stderr)
    for key in report.removed:
        print(
            f"{key}: snapshot of a removed contract kept; delete it by hand if the contract is retired", file=sys.stderr
        )
    written = len(report.missing) + len(report.additive) + (len(report.breaking) if args.accept_breaking else 0)
    print(f"{len(ALL_CONTRACTS)} contracts, {written} snapshot(s) written to {args.dir}")
    return 1 if report.breaking and not args.accept_breaking else 0


if __name__ == "__main__":
    sys.exit(main())
