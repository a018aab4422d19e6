"""How much memory this machine can still give: what in-memory readers check before they load."""
from __future__ import annotations

import os
from pathlib import Path


def available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo (Linux); the physical memory where that cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
