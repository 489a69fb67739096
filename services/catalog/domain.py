"""Catalog decisions, free of IO (resolution and validation arrive with the catalog capability)."""
