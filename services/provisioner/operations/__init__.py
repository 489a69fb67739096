"""The provisioner's use cases: provision requests (`provision.py`) and the inventory (`inventory.py`)."""

from services.provisioner.operations.inventory import InventoryOps, entry
from services.provisioner.operations.provision import Jobs, Operations

__all__ = ["InventoryOps", "Jobs", "Operations", "entry"]
