"""Label stage figures, printed as one JSON document (never run as a test).

- ``captioner``: captions per second of the tiny BLIP captioner (the real transformers generate
  path; a real BLIP is ~100x the compute per caption).
- ``tagging``: tags per second through an OpenAI-compatible server on loopback that takes
  ``--latency`` seconds per request (as a model server would), with 1 and with 8 requests in
  flight; target: 8 concurrent >= 5x one at a time.
- ``stage``: the label stage on the demo site's clean images with the tiny profile's models
  (captioner, CLIP re-ranking, base tokenizer, local tagger + keyword fallback); the re-ranking's
  share of the stage's time (target <= 10%).

    python bench/label.py [--images 64] [--latency 0.1]

On a busy machine, torch's intra-op threads contend with other processes and the toy models get
many times slower; ``OMP_NUM_THREADS=1`` shows what the code itself costs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lora_factory.config import LabelConfig, LlmEndpointConfig  # noqa: E402
from lora_factory.llm_client import ChatClient  # noqa: E402
from lora_factory.profiles import load_config  # noqa: E402
from spiders.sources.demo_site import generate_demo_site  # noqa: E402
from tasks.label.captioning import captioner_captions  # noqa: E402
from tasks.label.stage import label_items  # noqa: E402
from tasks.label.tagging import EndpointChat, TagInput, tag_items  # noqa: E402
from tasks.label.task import load_models  # noqa: E402
from tests.chat_server import serve_chat  # noqa: E402
from tests.curate_demo_items import demo_items  # noqa: E402


def bench_captioner(paths: list[Path], cache: Path) -> dict:
    from lora_factory.models import load_captioner

    captioner = load_captioner("tiny:captioner", cache)
    captioner_captions(paths[:8], captioner, 8, 30)  # warm-up
    started = time.perf_counter()
    captions = captioner_captions(paths, captioner, 8, 30)
    seconds = time.perf_counter() - started
    return {"images": len(captions), "seconds": round(seconds, 3), "captions_per_s": round(len(captions) / seconds, 2),
            "model": "tiny:captioner (random weights)"}


def _serve(latency_s: float, urls: mp.Queue, stop: mp.Event) -> None:
    """The chat server in its own process, as a model server is (it does not share our GIL)."""
    with serve_chat(latency_s=latency_s) as server:
        urls.put(server.url)
        stop.wait()


def bench_tagging(n: int, latency_s: float) -> dict:
    entries = [TagInput(str(i), "lighthouse", [("alt_text", f"a striped lighthouse number {i}")]) for i in range(n)]
    out: dict = {"images": n, "server_latency_s": latency_s}
    urls: mp.Queue = mp.Queue()
    stop = mp.Event()
    server = mp.Process(target=_serve, args=(latency_s, urls, stop), daemon=True)
    server.start()
    try:
        url = urls.get(timeout=60)
        for workers in (1, 8):
            cfg = LabelConfig(tag_batch_size=1, llm=LlmEndpointConfig(base_url=url, model="bench",
                                                                      max_concurrency=workers, api_key_env=None))
            client = ChatClient(cfg.llm)  # no cache: every request reaches the server
            started = time.perf_counter()
            tags, stats = tag_items(entries, EndpointChat(client), "openai", cfg, None, workers)
            seconds = time.perf_counter() - started
            assert stats.valid_first_try == n and all(t["tag_source"] == "openai" for t in tags)
            out[f"concurrency_{workers}"] = {"seconds": round(seconds, 3), "tags_per_s": round(n / seconds, 2)}
    finally:
        stop.set()
        server.join(timeout=10)
    out["speedup_8_vs_1"] = round(out["concurrency_8"]["tags_per_s"] / out["concurrency_1"]["tags_per_s"], 2)
    out["target_speedup"] = 5.0
    return out


def bench_stage(items: list[dict], crawl: Path, home: Path) -> dict:
    cfg = load_config("tiny", {"home": str(home)}, environ={})
    models = load_models(cfg)
    label_items(items[:4], crawl, cfg.label, models, ["lighthouse"])  # warm-up (and the tagger's cache)
    started = time.perf_counter()
    result = label_items(items, crawl, cfg.label, models, ["lighthouse", "sailboat", "cactus"])
    seconds = time.perf_counter() - started
    rerank = result.timings.get("rerank", 0.0)
    return {"images": len(items), "labelled": len(result.labels), "seconds": round(seconds, 3),
            "steps_s": {k: round(v, 3) for k, v in result.timings.items()},
            "rerank_share": round(rerank / seconds, 4), "target_rerank_share": 0.10,
            "note": "tiny profile models (random weights); torch threads as in torch_threads below"}


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds the chat server takes per request")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-label-") as tmp_name:
        tmp = Path(tmp_name)
        site = generate_demo_site(tmp / "site", seed=0)
        items, truth = demo_items(site, tmp / "crawl")
        clean = [it for it in items if truth[it["item_id"]]["kind"] == "clean"]
        pool = (clean * (args.images // len(clean) + 1))[: args.images]
        paths = [tmp / "crawl" / it["image_path"] for it in pool]
        home = tmp / "home"
        figures = {
            "captioner": bench_captioner(paths, home / "models"),
            "tagging": bench_tagging(args.images, args.latency),
            "stage": bench_stage(clean, tmp / "crawl", home),
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(),
            "torch_threads": _torch_threads(),
        }
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
