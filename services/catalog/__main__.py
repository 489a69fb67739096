"""`python -m services.catalog`: run the catalog service until SIGTERM."""

from services.catalog.app import build_app
from services.catalog.settings import CatalogSettings
from services.runtime.service import run_service


def main() -> None:
    run_service(lambda: build_app(CatalogSettings()))


if __name__ == "__main__":
    main()
