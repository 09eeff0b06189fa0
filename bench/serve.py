"""Serving figures, printed as one JSON document:

- ``feedback``: ``POST /feedback`` requests/s and p50/p99 latency at ``--clients`` concurrent
  keep-alive clients for ``--duration`` seconds against a ``lora-factory serve`` subprocess on
  loopback (SQLite store, rate limit off), and the server's CPU ms per request (the figure that
  does not depend on what else runs). Target: ≥ 500 req/s, zero errors.
- ``feedback_at_rate``: the same clients paced to ``--rate`` (500) requests/s in all, each request
  sent at its scheduled time and its latency counted from that time (so a stalled server is not
  hidden by clients that stop sending: no coordinated omission). Target: p99 < 50 ms at 500 req/s.
  At full speed (above) latency is mostly queueing behind the other 31 clients.
- ``generate``: ``POST /generate`` latency on ``tiny:sd`` (2 steps, 64 px), alternating two
  concepts whose random LoRAs are registered as champions in a fresh MLflow SQLite registry.
- ``switch``: switching concepts by ``set_adapters`` on one loaded pipeline vs reloading the
  pipeline and its LoRA (the way without adapter swapping). Target: swap ≥ 10x faster.

The client runs in this process (asyncio, raw HTTP/1.1) and shares the machine's cores with the
server: on a loaded 2-core machine read the figures with the load average printed beside them.
The LoRAs are random: the images mean nothing, only the timings do.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.serve_helpers import random_lora, register_champion, request, serve_process  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _client(host: str, port: int, deadline: float, latencies: list[float], errors: list[str],
                  interval: float = 0.0) -> None:
    """Send ratings until ``deadline``: back to back, or one every ``interval`` seconds (then the
    latency counts from the scheduled send time, however late the previous answer came)."""
    body = json.dumps({"run_id": "bench", "concept": "bench", "rating": 4}).encode()
    head = (f"POST /feedback HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    reader, writer = await asyncio.open_connection(host, port)
    scheduled = time.perf_counter() + interval * random.random()  # spread the clients' phases
    try:
        while time.monotonic() < deadline:
            if interval:
                await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
                start, scheduled = scheduled, scheduled + interval
            else:
                start = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - start)
            if b" 201 " not in status_line:
                errors.append(status_line.decode(errors="replace").strip())
    finally:
        writer.close()


async def _load(base: str, clients: int, duration: float, rate: float = 0.0) -> dict[str, float]:
    """Full speed (``rate`` 0) or ``rate`` requests/s in all, shared by the clients."""
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[str] = []
    interval = clients / rate if rate else 0.0
    start = time.monotonic()
    await asyncio.gather(*[_client(host, int(port), start + duration, latencies, errors, interval)
                           for _ in range(clients)])
    elapsed = time.monotonic() - start
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(latencies),
            "req_per_s": round(len(latencies) / elapsed, 1),
            "p50_ms": round(1000 * _percentile(latencies, 0.50), 2),
            "p99_ms": round(1000 * _percentile(latencies, 0.99), 2), "errors": len(errors)}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_feedback(tmp: Path, clients: int, duration: float, rate: float) -> dict[str, dict[str, float]]:
    """Paced at ``rate`` on the fresh store, then full speed; besides the rates, the server's CPU milliseconds per
    request: on a machine others load, the figure that does not move with their load."""
    out = {}
    with serve_process(tmp / "feedback-home", TOKEN, "serve.rate_per_s=0") as (base, proc):
        request("POST", f"{base}/feedback", {"run_id": "w", "concept": "bench", "rating": 4}, token=TOKEN)
        for name, pace in (("feedback_at_rate", rate), ("feedback", 0.0)):
            cpu = _cpu_seconds(proc.pid)
            gc.disable()  # the client's collections would show as the server's latency
            try:
                result = asyncio.run(_load(base, clients, duration, pace))
            finally:
                gc.enable()
            result["server_cpu_ms_per_request"] = round(
                1000 * (_cpu_seconds(proc.pid) - cpu) / max(1, result["requests"]), 3)
            out[name] = result | ({"target_req_per_s": pace} if pace else {})
    return out


def _registry(tmp: Path, models: Path) -> tuple[Path, dict[str, Path]]:
    home = tmp / "generate-home"
    home.mkdir(parents=True)
    (home / "models").symlink_to(models)
    loras = {c: random_lora(models, home / "loras" / c, seed) for c, seed in (("alpha", 1), ("beta", 2))}
    for concept, lora in loras.items():
        register_champion(f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts", concept, lora)
    return home, loras


def bench_generate(home: Path, repeats: int) -> dict[str, float]:
    with serve_process(home, TOKEN) as (base, _):
        times = []
        for i in range(repeats + 2):  # the first two load the pipeline and each adapter
            start = time.perf_counter()
            status, _, _ = request("POST", f"{base}/generate", {"prompt": "lfstyle, a shape",
                                   "concept": ("alpha", "beta")[i % 2], "seed": i, "steps": 2})
            assert status == 200, status
            if i >= 2:
                times.append(time.perf_counter() - start)
    return {"requests": repeats, "steps": 2, "p50_s": round(statistics.median(times), 4),
            "max_s": round(max(times), 4)}


def bench_switch(models: Path, loras: dict[str, Path], repeats: int) -> dict[str, float]:
    from deploy.serving.adapters import load_base

    pipe = load_base("tiny:sd", models, "cpu")
    for name, lora in loras.items():
        pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name=name)
    swaps, reloads = [], []
    for i in range(repeats):
        name = ("alpha", "beta")[i % 2]
        start = time.perf_counter()
        pipe.set_adapters([name], [1.0])
        swaps.append(time.perf_counter() - start)
        start = time.perf_counter()
        fresh = load_base("tiny:sd", models, "cpu")
        fresh.load_lora_weights(str(loras[name].parent), weight_name=loras[name].name)
        reloads.append(time.perf_counter() - start)
        del fresh
    swap, reload = statistics.median(swaps), statistics.median(reloads)
    return {"repeats": repeats, "swap_ms": round(1000 * swap, 3), "reload_ms": round(1000 * reload, 1),
            "speedup": round(reload / swap, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of feedback load")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s of the paced phase")
    parser.add_argument("--generate-repeats", type=int, default=6)
    parser.add_argument("--switch-repeats", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        models = tmp / "models"
        models.mkdir()
        result: dict[str, object] = {"load_average_before": os.getloadavg()}
        result.update(bench_feedback(tmp, args.clients, args.duration, args.rate))
        home, loras = _registry(tmp, models)
        result["generate"] = bench_generate(home, args.generate_repeats)
        result["switch"] = bench_switch(models, loras, args.switch_repeats)
        result["load_average_after"] = os.getloadavg()
        result["note"] = "random LoRAs on tiny:sd: images are meaningless, timings are not"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
