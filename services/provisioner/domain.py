"""Provisioner decisions, free of IO: what a provision command asks for."""

from __future__ import annotations

from contracts.provisioner import ProvisionCommand


def describe(cmd: ProvisionCommand) -> str:
    """A one-line, human summary of what was asked, for progress events and the audit trail."""
    roles = ", ".join(cmd.roles) or "all roles of the active profile set"
    hosts = ", ".join(cmd.hosts) or "every host with a reachable Ollama"
    models = f"; models {', '.join(cmd.models)}" if cmd.models else ""
    return f"roles {roles}{models} on {hosts}{' (forced)' if cmd.force else ''}"
