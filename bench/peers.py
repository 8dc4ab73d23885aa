"""Agent Spaces side by side with the floor plugin of the shared bench, at two loads.

Runs ../shared/bench/bench_peers.sh (override: AGENTSPACES_SHARED_BENCH) with this project's
venv on the floor spec and the Agent Spaces spec: once at its default load (10 rooms x 10
messages at once) and once with 20 rooms x 10 messages. Prints both results tables, then the
ratios Agent Spaces / floor from the same run. The floor is what maubot, mautrix and Synapse cost
on the machine at that moment, so only ratios compare across runs.

The shared folder is read-only: every output goes to a temp dir under /tmp (PEERS_KEEP=1 keeps
it). Each run picks free ports in bench_peers.sh's range, so that a run elsewhere on the machine
does not collide with it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

from tests.config import ROOT
from tests.harness.procs import port_is_free, stop_pid, tail

SPECS = ("refs/refbot-floor.yaml", "agentspaces.yaml")
LOADS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("10 rooms x 10 messages (default)", ()),
    ("20 rooms x 10 messages", ("--rooms", "20", "--per-room", "10")),
)
# (label, path in a peer's results.json entry); "ms" figures are better lower, msgs/s higher.
METRICS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("in-maubot p50 seq (ms)", ("seq", "in_maubot", "p50")),
    ("in-maubot p99 seq (ms)", ("seq", "in_maubot", "p99")),
    ("msgs/s conc", ("conc", "msgs_per_s")),
    ("in-maubot p50 conc (ms)", ("conc", "in_maubot", "p50")),
    ("maubot CPU ms/msg seq", ("seq", "cpu", "maubot_cpu_ms_per_msg")),
    ("maubot CPU ms/msg conc", ("conc", "cpu", "maubot_cpu_ms_per_msg")),
    ("Synapse CPU ms/msg conc", ("conc", "cpu", "synapse_cpu_ms_per_msg")),
)
# bench_peers.sh refuses ports outside this range.
PORT_RANGE = (38000, 38999)


def shared_bench() -> Path:
    return Path(os.environ.get("AGENTSPACES_SHARED_BENCH", ROOT.parent / "shared" / "bench"))


def free_ports(count: int) -> list[int]:
    candidates = random.sample(range(PORT_RANGE[0], PORT_RANGE[1] + 1), 200)
    ports = [port for port in candidates if port_is_free(port)][:count]
    if len(ports) < count:
        raise RuntimeError(f"fewer than {count} free ports in {PORT_RANGE}")
    return ports


def stock_maubot_venv(peers_dir: Path) -> Path:
    """A venv that runs the project's packages as a stock pip maubot has them: the dev venv
    holds the encryption packages (for the encrypted-room tests), which this one hides, as the
    floor's figures assume a maubot without crypto. The bench script sets PYTHONPATH itself, so
    the hiding goes into a .pth file."""
    path = peers_dir / "venv-stock"
    if not (path / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=False).create(path)
        project = (
            ROOT / ".venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        )
        site = path / "lib" / project.name / "site-packages"
        shim = ROOT / "tests" / "harness" / "nocrypto"
        (site / "agentspaces-stock.pth").write_text(f"{shim}\n{project / 'site-packages'}\n")
    return path


def run_load(shared: Path, peers_dir: Path, name: str, args: tuple[str, ...]) -> dict[str, Any]:
    """One bench_peers.sh run; returns its results.json. Its progress goes to stderr."""
    bench_root = peers_dir / name
    syn, mb, fake = free_ports(3)
    env = {
        **os.environ,
        "PROJECT_DIR": str(ROOT),
        "BENCH_VENV": str(stock_maubot_venv(peers_dir)),
        "PEERS_DIR": str(peers_dir),
        "BENCH_ROOT": str(bench_root),
        "SYN_PORT": str(syn),
        "MB_PORT": str(mb),
        "FAKE_PORT": str(fake),
    }
    specs = [str(shared / spec) for spec in SPECS]
    log_path = peers_dir / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            ["bash", str(shared / "bench_peers.sh"), *args, *specs],
            cwd=ROOT,
            env=env,
            stdout=log,
        )
        try:
            rc = proc.wait()
        finally:
            # Interrupted: its own EXIT trap stops the servers it started, by their PIDs.
            stop_pid(proc, timeout=60)
    results = bench_root / "results.json"
    if rc != 0 or not results.exists():
        raise RuntimeError(f"bench_peers.sh exited with {rc}:\n{tail(log_path)}")
    return json.loads(results.read_text())


def figure(result: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = result
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
    return float(node) if isinstance(node, int | float) else None


def ratios(label: str, results: dict[str, Any]) -> str:
    """A markdown table: floor, Agent Spaces and their ratio for each metric."""
    floor, ours = results["results"]
    lines = [
        f"### Agent Spaces / floor, {label}",
        "",
        f"| metric | {floor['name']} | {ours['name']} | ratio |",
        "|---|---|---|---|",
    ]
    for name, path in METRICS:
        a, b = figure(floor, path), figure(ours, path)
        ratio = f"{b / a:.2f}" if a and b is not None else "–"
        shown = [f"{v:.2f}" if v is not None else "–" for v in (a, b)]
        lines.append(f"| {name} | {shown[0]} | {shown[1]} | {ratio} |")
    return "\n".join(lines)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run_peers(peers_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    shared = shared_bench()
    if not (shared / "bench_peers.sh").exists():
        raise FileNotFoundError(f"no bench_peers.sh in {shared} (AGENTSPACES_SHARED_BENCH)")
    runs = []
    for n, (label, args) in enumerate(LOADS, 1):
        started = time.monotonic()
        print(f"-- load {n}/{len(LOADS)}: {label}; load average {loadavg()}", flush=True)
        results = run_load(shared, peers_dir, f"load{n}", args)
        print(f"   done in {time.monotonic() - started:.0f} s; load average {loadavg()}")
        failed = [r["name"] for r in results["results"] if "seq" not in r]
        if failed:
            raise RuntimeError(f"no figures for {failed}: see {peers_dir / f'load{n}'}")
        runs.append((label, results))
    return runs


def main() -> None:
    peers_dir = Path(tempfile.mkdtemp(prefix="agentspaces-peers-", dir="/tmp"))
    print(f"== Agent Spaces and the floor side by side; outputs in {peers_dir}", flush=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        runs = run_peers(peers_dir)
    except Exception as e:
        print(f"peers: the harness failed: {e}; files: {peers_dir}", file=sys.stderr)
        raise SystemExit(1) from e
    print(f"started {started}, ended {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    for n, (label, _) in enumerate(runs, 1):
        print(f"\n## {label}\n")
        print((peers_dir / f"load{n}" / "results.md").read_text())
    for label, results in runs:
        print(ratios(label, results) + "\n")
    print("ratio > 1: Agent Spaces costs more (ms) or, for msgs/s, serves more than the floor.")
    if os.environ.get("PEERS_KEEP") == "1":
        print(f"kept {peers_dir}")
    else:
        shutil.rmtree(peers_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
