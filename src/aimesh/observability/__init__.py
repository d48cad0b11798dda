"""Logs, metrics and the event loop shared by every service."""

from aimesh.observability.logging import JsonFormatter, configure_logging
from aimesh.observability.loop import run_service

__all__ = ["JsonFormatter", "configure_logging", "run_service"]
