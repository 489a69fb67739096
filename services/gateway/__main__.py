"""`python -m services.gateway`: serve the REST API until SIGTERM."""

import logging
import os

from services.gateway.app import serve
from services.gateway.settings import GatewaySettings


def main() -> None:
    logging.basicConfig(level=os.environ.get("MODELFLEET_LOG_LEVEL", "INFO").upper())
    serve(GatewaySettings())


if __name__ == "__main__":
    main()
