"""The thin REST face of the fleet: FastAPI in front of the bus; it keeps no state."""
