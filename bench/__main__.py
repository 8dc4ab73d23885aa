"""Runs every benchmark module in this package: its `main()`, or its `run_*_bench()` functions."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path
from typing import Any

from bench.machine import describe_machine


def _entry_points(module: Any) -> list[Any]:
    if callable(getattr(module, "main", None)):
        return [module.main]
    return [
        fn
        for name, fn in inspect.getmembers(module, inspect.isfunction)
        if name.startswith("run_") and name.endswith("_bench") and fn.__module__ == module.__name__
    ]


def run(selected: list[str]) -> None:
    print(describe_machine())
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name in ("__main__", "machine") or (selected and info.name not in selected):
            continue
        module = importlib.import_module(f"bench.{info.name}")
        for entry in _entry_points(module):
            print(f"\n== bench.{info.name}.{entry.__name__}")
            result = entry()
            if inspect.iscoroutine(result):
                asyncio.run(result)


if __name__ == "__main__":
    # `python -m bench dispatch` runs only bench/dispatch.py.
    run(sys.argv[1:])
