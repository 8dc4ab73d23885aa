"""The machine the figures were measured on, printed with them."""

from __future__ import annotations

import os
import platform
import sqlite3
from pathlib import Path


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        total_kb = int(meminfo.read_text().split("\n", 1)[0].split()[1])
        memory = f", {total_kb / 1024 / 1024:.1f} GiB RAM"
    return (
        f"machine: {cpu}, {os.cpu_count()} cores{memory}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; SQLite {sqlite3.sqlite_version}"
    )
