"""CPU time from /proc: of the whole machine (how busy it was around a measurement), and of
one process (what a server spent on it)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["machine_cpu_s", "process_cpu_s"]


def machine_cpu_s() -> float | None:
    """CPU seconds every process of the machine used so far; ``None`` without /proc."""
    try:
        fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait; no guest twice
    return busy / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user and system) process ``pid`` used so far; ``None`` if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
