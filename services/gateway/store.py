"""The gateway keeps nothing: every answer comes over the bus from the service that owns it."""
