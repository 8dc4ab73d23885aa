"""Memory under images: 20 rooms each send a 10 MB image at once to a vision agent.

A real Synapse and maubot with the built plugin (the chaos soak's cluster, `bench/chaos.py`), and
the fake OpenAI server as the vision agent, answering after a pause so that every image is in
flight at once. Each image is uploaded to Synapse first, then all 20 messages are sent together.
The figure is the growth of the maubot process's peak RSS (VmHWM, reset just before the burst,
and cross-checked by sampling VmRSS) against the bytes in flight (20 x 10 MB); the target is at
most 3x. Every image the agent received is checked byte for byte against the upload.

Sizes from the environment: MEDIA_ROOMS (20), MEDIA_BYTES (10,000,000), MEDIA_DELAY (2.0 s, the
agent's pause); MEDIA_KEEP=1 keeps the temp dir.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.chaos import Cluster, Params, build_mbp
from tests.fakes.servers import Behavior, data_urls

AGENT = "chaos"
SAMPLE_EVERY = 0.02
MiB = 1024 * 1024


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class MediaCluster(Cluster):
    def __init__(self, root: Path, rooms: int, size: int) -> None:
        params = Params(
            rooms=rooms,
            users=max(1, rooms // 5),
            messages=rooms,
            kills=0,
            rate=1.0,
            deadline=300.0,
            quiet=60.0,
            seed=0,
            keep=False,
        )
        super().__init__(root, params)
        self.size = size

    def plugin_config(self) -> dict[str, Any]:
        config = super().plugin_config()
        config["agents"][0]["vision"] = True
        config["agents"][0]["stream"] = False
        # Every room's image in flight at once: no global limit below the number of rooms.
        config["dispatch.max_concurrency"] = self.params.rooms
        config["attachments.max_bytes"] = self.size + MiB
        return config


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def reset_peak(pid: int) -> bool:
    """Resets the process's VmHWM to its current RSS (Linux 4.0+), if allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


async def sample(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], memory_kib(pid)["VmRSS"])
        await asyncio.sleep(SAMPLE_EVERY)


def received_digests(cluster: MediaCluster) -> list[str]:
    digests = []
    for recorded in cluster.fake.requests:
        content = recorded.body["messages"][-1]["content"]
        for url in data_urls(content):
            digests.append(hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest())
    return digests


async def burst(cluster: MediaCluster) -> None:
    assert cluster.server is not None and cluster.server.proc is not None and cluster.bot
    rooms, size = list(cluster.owners), cluster.size
    images = [b"\x89PNG\r\n\x1a\n" + os.urandom(size - 8) for _ in rooms]
    digests = sorted(hashlib.sha256(image).hexdigest() for image in images)
    started = time.monotonic()
    content = []
    for room_id, image in zip(rooms, images, strict=True):
        mxc = await cluster.owners[room_id].upload(image, "image/png", "big.png")
        content.append((room_id, mxc))
    print(f"uploaded {len(rooms)} × {size:,} bytes in {time.monotonic() - started:.1f} s")
    del images
    # One small image first, so that nothing the first burst loads counts as its growth.
    warm_room = rooms[0]
    warm = await cluster.owners[warm_room].send_file(
        warm_room, b"\x89PNG" + bytes(1000), "w.png", "image/png"
    )
    await cluster.owners[warm_room].wait_for_reply(warm_room, warm, cluster.bot.bot_id, 60)
    await asyncio.sleep(2)
    cluster.fake.requests.clear()

    pid = cluster.server.proc.pid
    before = memory_kib(pid)["VmRSS"]
    exact_peak = reset_peak(pid)
    peak = [before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample(pid, peak, stop))
    sent_at = time.monotonic()
    event_ids = await asyncio.gather(
        *(
            cluster.owners[room_id].send(
                room_id,
                {
                    "msgtype": "m.image",
                    "body": "big.png",
                    "url": mxc,
                    "info": {"mimetype": "image/png", "size": size},
                },
            )
            for room_id, mxc in content
        )
    )
    await asyncio.gather(
        *(
            cluster.owners[room_id].wait_for_reply(room_id, event_id, cluster.bot.bot_id, 300)
            for (room_id, _), event_id in zip(content, event_ids, strict=True)
        )
    )
    answered = time.monotonic() - sent_at
    stop.set()
    await sampler
    hwm = memory_kib(pid)["VmHWM"]
    report(cluster, before, hwm if exact_peak else None, peak[0], answered)
    got = sorted(received_digests(cluster))
    verdict = "all equal" if got == digests else f"MISMATCH ({len(got)} images received)"
    print(f"images the agent received vs the uploads: {verdict}")


def report(cluster: MediaCluster, before: int, hwm: int | None, sampled: int, secs: float) -> None:
    in_flight = len(cluster.owners) * cluster.size
    print(f"answered {len(cluster.owners)} images in {secs:.1f} s")
    print(f"maubot RSS before the burst: {before / 1024:.1f} MiB")
    for name, peak in (("VmHWM (exact peak)", hwm), ("sampled VmRSS peak", sampled)):
        if peak is None:
            print(f"{name}: not available (cannot reset /proc/<pid>/clear_refs)")
            continue
        growth = (peak - before) * 1024
        print(
            f"{name}: {peak / 1024:.1f} MiB; growth {growth / MiB:.1f} MiB for "
            f"{in_flight / MiB:.1f} MiB in flight = {growth / in_flight:.2f}× (target ≤ 3×)"
        )


async def run_media() -> None:
    rooms = env_int("MEDIA_ROOMS", 20)
    size = env_int("MEDIA_BYTES", 10_000_000)
    delay = float(os.environ.get("MEDIA_DELAY", 2.0))
    root = Path(tempfile.mkdtemp(prefix="agentspaces-media-", dir="/tmp"))
    print(f"== {rooms} rooms each send a {size:,}-byte image at once; the agent waits {delay} s")
    mbp = await asyncio.to_thread(build_mbp)
    cluster = MediaCluster(root, rooms, size)
    cluster.fake.default = Behavior(delay=delay)
    try:
        await cluster.start(mbp)
        await burst(cluster)
    finally:
        await cluster.stop()
    if os.environ.get("MEDIA_KEEP") == "1":
        print(f"kept {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    asyncio.run(run_media())
