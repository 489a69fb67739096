"""`python -m services.provisioner`: run the provisioner service until SIGTERM."""

from services.provisioner.app import build_app
from services.provisioner.settings import ProvisionerSettings
from services.runtime.service import run_service


def main() -> None:
    run_service(lambda: build_app(ProvisionerSettings()))


if __name__ == "__main__":
    main()
