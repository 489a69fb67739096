"""`python -m services.hardware_probe`: run the hardware-probe service until SIGTERM."""

from services.hardware_probe.app import build_app
from services.hardware_probe.settings import HardwareProbeSettings
from services.runtime.service import run_service


def main() -> None:
    run_service(lambda: build_app(HardwareProbeSettings()))


if __name__ == "__main__":
    main()
