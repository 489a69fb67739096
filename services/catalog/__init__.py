"""The model library, profiles, roles and user overrides; answers rpc.catalog.resolve.v1."""
