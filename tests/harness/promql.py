"""The metric names a PromQL expression reads, and every expression of the dashboards and alert rules.

Not a PromQL parser: enough of the grammar to find metric names (identifiers that are not functions, keywords,
label names or durations) in the expressions this project writes, with balanced brackets checked on the way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "observability" / "grafana" / "dashboards" / "modelfleet"
ALERTS = ROOT / "observability" / "alerts.yml"

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "inf", "nan",
}  # fmt: skip
#: Series Prometheus makes itself for every target; an expression may read them without the fleet exposing them.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names `expr` reads; raises ValueError on unbalanced brackets."""
    text = _STRING.sub('""', expr)
    for open_, close in ("()", "{}", "[]"):
        if text.count(open_) != text.count(close):
            raise ValueError(f"unbalanced {open_}{close} in {expr!r}")
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = text.replace("$__all", " ").replace("$role", " ").replace("$host", " ")
    names: set[str] = set()
    for match in _IDENT.finditer(text):
        word, rest = match.group(), text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in KEYWORDS:
            continue  # a function call or an operator keyword
        before = text[: match.start()]
        if before.rstrip().endswith(("$", ".")) or re.search(r"\d$", before):
            continue  # a template variable, or part of a number such as 1e3
        names.add(word)
    return names


def dashboard_exprs() -> dict[str, str]:
    """Every query of every generated dashboard (panel targets and variable queries), keyed by where it is."""
    found: dict[str, str] = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel.get("targets", []):
                found[f"{path.name}: {panel['title']} [{target['refId']}]"] = target["expr"]
        for var in board["templating"]["list"]:
            query = var["query"]["query"]
            inner = re.fullmatch(r"label_values\((.+),\s*[A-Za-z_]+\)", query)
            found[f"{path.name}: variable {var['name']}"] = inner.group(1) if inner else query
    return found


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {f"alerts.yml: {r['alert']}": r["expr"] for g in rules["groups"] for r in g["rules"]}
