"""Tables of data for the terminal: every cell is shown literally (a name like `FLUX.1 [dev]` is not rich markup)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.markup import escape
from rich.table import Table


def data_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[object]], *, keep_whole: Sequence[str] = ("id",)
) -> Table:
    """`keep_whole` columns never wrap or truncate: an id that is cut cannot be pasted back."""
    table = Table(title=escape(title))
    for col in columns:
        table.add_column(col, no_wrap=col in keep_whole)
    for row in rows:
        table.add_row(*(escape(str(cell)) for cell in row))
    return table
