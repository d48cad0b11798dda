"""Logs, metrics and the event loop shared by every service."""

from aimesh.observability.logging import JsonFormatter, configure_logging
from aimesh.observability.loop import cancel_and_wait, run_service

__all__ = ["JsonFormatter", "cancel_and_wait", "configure_logging", "run_service"]
