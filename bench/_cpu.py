"""CPU time of the whole machine, from /proc/stat: how busy it was around a measurement."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["machine_cpu_s"]


def machine_cpu_s() -> float | None:
    """CPU seconds every process of the machine used so far; ``None`` without /proc."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait; no guest twice
    return busy / os.sysconf("SC_CLK_TCK")
