"""Catalog tables (schema `catalog`); the first revision holds only its outbox."""
