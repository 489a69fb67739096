"""The live fleet view built from the event streams; answers rpc.router.route.v1."""
