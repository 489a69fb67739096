"""The `modelfleet` command line: `up` runs a fleet on this machine; every other command talks to a gateway."""
