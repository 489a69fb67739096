"""`python -m services.gateway`: serve the REST API until SIGTERM."""

import logging
import os

import uvicorn

from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    logging.basicConfig(level=os.environ.get("MODELFLEET_LOG_LEVEL", "INFO").upper())
    settings = GatewaySettings()
    uvicorn.run(build_app(settings), host=settings.bind, port=settings.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
