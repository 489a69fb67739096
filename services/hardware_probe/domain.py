"""Probe decisions, free of IO: the schedule of samples."""

from __future__ import annotations


def next_delay(interval_s: float, spent_s: float) -> float:
    """Keep a steady cadence: a slow sample shortens the wait, never below zero."""
    return max(0.0, interval_s - spent_s)
