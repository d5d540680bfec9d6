"""The coordinator: drives the cut protocol across hosts and decides levels and policy."""

from cleancut.coordinator.cut import Coordinator, CutOutcome, EventSink

__all__ = ["Coordinator", "CutOutcome", "EventSink"]
