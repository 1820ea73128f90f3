"""Outages as they happen: per-minute signals, a CUSUM detector, and events."""
