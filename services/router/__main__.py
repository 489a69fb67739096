"""`python -m services.router`: run the router service until SIGTERM."""

from services.router.app import build_app
from services.router.settings import RouterSettings
from services.runtime.service import run_service


def main() -> None:
    run_service(lambda: build_app(RouterSettings()))


if __name__ == "__main__":
    main()
