"""CLI tables show data literally and keep ids whole."""

from __future__ import annotations

import pytest
from rich.console import Console

from services.cli.render import data_table

pytestmark = pytest.mark.unit


def test_brackets_in_names_are_shown_not_taken_as_markup():
    console = Console(record=True, width=72)
    uuid = "00000000-0000-0000-0000-000000000017"
    console.print(data_table("models [all]", ("id", "name"), [(uuid, "FLUX.1 [dev]"), ("x", "[bold]not bold[/bold]")]))
    text = console.export_text()
    assert "FLUX.1 [dev]" in text
    assert "[bold]not bold[/bold]" in text
    assert "models [all]" in text
    assert uuid in text  # not wrapped or cut, even on a narrow terminal
