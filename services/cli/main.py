"""The `modelfleet` console script (typer + rich)."""

from __future__ import annotations

import typer

from services.cli import catalog_cmds, hardware_cmds, provision_cmds, route_cmds, token_cmds, updates_cmds
from services.cli import diagnose as diagnose_cmd
from services.cli import status as status_cmd
from services.cli import up as up_cmd

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="modelfleet: a fleet manager for local LLMs.",
)
app.command("up")(up_cmd.up)
app.command("status")(status_cmd.status)
app.command("hardware")(hardware_cmds.hardware)
app.command("fit")(hardware_cmds.fit)
app.command("diagnose")(diagnose_cmd.diagnose)
app.command("route")(route_cmds.route)
app.command("backends")(route_cmds.backends)
app.command("chat")(route_cmds.chat)
provision_cmds.register(app)
app.add_typer(catalog_cmds.models_app, name="models")
app.add_typer(catalog_cmds.profiles_app, name="profiles")
app.add_typer(catalog_cmds.catalog_app, name="catalog")
app.add_typer(token_cmds.tokens_app, name="tokens")
app.add_typer(updates_cmds.updates_app, name="updates")


def main() -> None:
    app()
