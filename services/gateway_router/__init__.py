"""The gateway with a router replica in its own process (`python -m services.gateway_router`, docs/gateway.md)."""
