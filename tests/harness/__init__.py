"""Test harness: real servers (environment URL, Docker, or embedded) and service processes."""
