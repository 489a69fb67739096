"""`python -m scripts.provision_models [--roles general coding] [--hosts ...] [--force] [--json]`: the same as
`modelfleet provision`, logging under the `scripts.models.provision` namespace."""

from __future__ import annotations

import argparse
import logging
import sys

from services.cli import provision_cmds

log = logging.getLogger("scripts.models.provision")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.provision_models", description=__doc__)
    parser.add_argument("--roles", nargs="*", default=[], help="roles to provision (default: every role)")
    parser.add_argument("--hosts", nargs="*", default=[], help="hosts (default: every host with a reachable Ollama)")
    parser.add_argument("--models", nargs="*", default=[], help="explicit model references")
    parser.add_argument("--force", action="store_true", help="bypass the per-role cache and re-verify")
    parser.add_argument("--allow-unpinned", action="store_true")
    parser.add_argument("--json", action="store_true", help="print only the per-role actions as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    body = {"roles": args.roles, "hosts": args.hosts, "models": args.models, "force": args.force,
            "allow_unpinned": args.allow_unpinned}  # fmt: skip
    return provision_cmds.run(body, "/api/v1/models/provision", args.json, log)


if __name__ == "__main__":
    raise SystemExit(main())
