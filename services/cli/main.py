"""The `modelfleet` console script (typer + rich)."""

from __future__ import annotations

import typer

from services.cli import diagnose as diagnose_cmd
from services.cli import hardware_cmds
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


def main() -> None:
    app()
