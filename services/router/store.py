"""The router keeps no tables: its fleet view is rebuilt from the event streams by every replica (DESIGN §8)."""
