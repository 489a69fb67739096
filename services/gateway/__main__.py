"""`python -m services.gateway`: serve the REST API until SIGTERM."""

import logging
import os

import uvicorn

from services.gateway.app import build_app
from services.gateway.settings import GatewaySettings
from services.runtime.service import event_loop


def main() -> None:
    logging.basicConfig(level=os.environ.get("MODELFLEET_LOG_LEVEL", "INFO").upper())
    loop = event_loop()  # a bad MODELFLEET_EVENT_LOOP stops the gateway here, as it stops every service
    settings = GatewaySettings()
    uvicorn.run(
        build_app(settings),
        host=settings.bind,
        port=settings.port,
        loop=loop,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=settings.keep_alive_s,
    )


if __name__ == "__main__":
    main()
