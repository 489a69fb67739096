"""Gateway decisions, free of IO: fold the services' health replies into one verdict."""

from __future__ import annotations

from collections.abc import Iterable

from contracts.health import HealthReply


def fleet_health(expected: Iterable[str], replies: list[HealthReply]) -> tuple[bool, dict[str, dict[str, object]]]:
    """Every expected service must have at least one healthy replica; silent ones count as down."""
    report: dict[str, dict[str, object]] = {}
    for name in expected:
        mine = [r for r in replies if r.service == name]
        healthy = any(r.healthy for r in mine)
        report[name] = {
            "status": "up" if healthy else ("down" if mine else "silent"),
            "replicas": [r.model_dump(mode="json") for r in mine],
        }
    return all(v["status"] == "up" for v in report.values()), report
