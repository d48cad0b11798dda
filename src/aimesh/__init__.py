"""aimesh."""
