"""Logs, metrics and the event loop shared by every service."""

from aimesh.observability.logging import JsonFormatter, configure_logging
from aimesh.observability.loop import (
    EXIT_STOP_TIMEOUT,
    STOP_SIGNALS,
    cancel_and_wait,
    run_service,
    stop_on_signals,
)

__all__ = [
    "EXIT_STOP_TIMEOUT",
    "STOP_SIGNALS",
    "JsonFormatter",
    "cancel_and_wait",
    "configure_logging",
    "run_service",
    "stop_on_signals",
]
