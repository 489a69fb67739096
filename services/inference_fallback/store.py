"""The fallback keeps no tables: its slots live in process memory, where the model weights are."""
