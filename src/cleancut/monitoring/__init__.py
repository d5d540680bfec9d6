"""Telling the truth about every run: Prometheus metrics, notifications and pings."""
