"""Logs and metrics shared by every service."""

from aimesh.observability.logging import JsonFormatter, configure_logging

__all__ = ["JsonFormatter", "configure_logging"]
