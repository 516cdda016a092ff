#!/usr/bin/env python3
"""A kurento-tap worker in plain Python (nats-py + numpy), written from docs/protocol.md alone.

Model py-brightness@1: per participant video frame (RGB24 48x32, 2 per second) it reports the mean
luma (brightness) and the mean absolute luma change since that participant's previous frame (motion).

    python3 worker.py --nats nats://127.0.0.1:4222
"""
import argparse
import asyncio
import json
import signal
import time

import nats
import numpy as np

BUCKET = "tap_models_v1"
NAME, VERSION = "py-brightness", "1"
WIDTH, HEIGHT = 48, 32
SPEC = {
    "protocol": 1,
    "name": NAME,
    "version": VERSION,
    "media": "video",
    "video": {"fps": 2, "every_nth": None, "width": WIDTH, "height": HEIGHT, "format": "RGB24"},
    "audio": None,
    "labels": ["brightness", "motion"],
    "output": "labels",
    "max_in_flight": 1,
    "deadline_ms": 1000,
    "heartbeat_ms": 1000,
}


def safe(s: str) -> str:
    out = "".join(c if (c.isascii() and c.isalnum()) or c in "-_" else "_" for c in s[:64])
    return out or "_"


def now_us() -> int:
    return time.time_ns() // 1000


async def open_bucket(js):
    try:
        return await js.key_value(BUCKET)
    except Exception:
        return await js.create_key_value(bucket=BUCKET, history=1)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()

    nc = await nats.connect(args.nats, name=f"python worker {NAME}@{VERSION}")
    kv = await open_bucket(nc.jetstream())
    key = f"{safe(NAME)}.{safe(VERSION)}"
    previous: dict[str, np.ndarray] = {}
    counts = {"ok": 0, "stale": 0, "malformed": 0}

    async def heartbeat() -> None:
        while True:
            spec = dict(SPEC, updated_ms=int(time.time() * 1000))
            await kv.put(key, json.dumps(spec).encode())
            await asyncio.sleep(SPEC["heartbeat_ms"] / 2000)

    async def reply_error(msg, kind: str) -> None:
        counts[kind] += 1
        await nc.publish(msg.reply, b"", headers={"Tap-Error": kind})

    async def handle(msg) -> None:
        received = time.perf_counter()
        h = msg.headers or {}
        try:
            if h.get("Tap-Version") != "1" or h.get("Tap-Media") != "video" or h.get("Tap-Format") != "RGB24":
                raise ValueError("unexpected headers")
            w, hgt = int(h["Tap-Width"]), int(h["Tap-Height"])
            deadline = int(h["Tap-Deadline-Us"])
            who = f'{h["Tap-Room"]}/{h["Tap-Participant"]}'
            if w <= 0 or hgt <= 0 or len(msg.data) != w * hgt * 3:
                raise ValueError("payload size does not match the headers")
        except (KeyError, ValueError):
            await reply_error(msg, "malformed")
            return
        if now_us() >= deadline:
            await reply_error(msg, "stale")
            return
        started = time.perf_counter()
        rgb = np.frombuffer(msg.data, dtype=np.uint8).reshape(hgt, w, 3).astype(np.float32)
        luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        prev = previous.get(who)
        motion = float(np.abs(luma - prev).mean() / 255.0) if prev is not None and prev.shape == luma.shape else 0.0
        previous[who] = luma
        brightness = float(luma.mean() / 255.0)
        done = time.perf_counter()
        body = {
            "labels": {"brightness": brightness, "motion": motion},
            "top": "brightness" if brightness >= motion else "motion",
            "extras": {"worker": "python"},
            "queue_ms": (started - received) * 1e3,
            "inference_ms": (done - started) * 1e3,
        }
        counts["ok"] += 1
        await nc.publish(msg.reply, json.dumps(body).encode())

    async def on_message(msg) -> None:
        try:
            await handle(msg)
        except Exception as e:  # a worker never dies on one chunk
            print(f"error: {e}", flush=True)
            await reply_error(msg, "malformed")

    beat = asyncio.create_task(heartbeat())
    sub = await nc.subscribe(f"tap.v1.chunk.{safe(NAME)}.{safe(VERSION)}", queue=f"tap-workers.{safe(NAME)}.{safe(VERSION)}",
                             cb=on_message, pending_msgs_limit=8)
    await nc.flush()
    print(f"serving {NAME}@{VERSION}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, stop.set)
    await stop.wait()
    await sub.drain()
    beat.cancel()
    await nc.drain()
    print(f"stopped: {counts}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
