"""`python -m services.gateway_router`: the gateway, with a router replica in its process, until SIGTERM."""

import logging
import os

from services.gateway.app import serve
from services.gateway.settings import GatewaySettings
from services.gateway_router.replica import ColocatedRouter
from services.router.settings import RouterSettings


def main() -> None:
    logging.basicConfig(level=os.environ.get("MODELFLEET_LOG_LEVEL", "INFO").upper())
    logging.getLogger("faststream").setLevel(logging.WARNING)
    serve(GatewaySettings(), ColocatedRouter(RouterSettings()))


if __name__ == "__main__":
    main()
