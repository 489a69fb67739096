"""`python -m scripts.diagnose_gpu`: a thin alias of `modelfleet diagnose` (same flags, same JSON)."""

import typer

from services.cli.diagnose import diagnose


def main() -> None:
    typer.run(diagnose)


if __name__ == "__main__":
    main()
