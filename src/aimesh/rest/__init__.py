"""REST plumbing every aimesh service shares: JSON error bodies with stable codes."""

from aimesh.rest.errors import install_error_handlers

__all__ = ["install_error_handlers"]
