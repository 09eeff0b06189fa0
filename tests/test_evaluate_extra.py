"""Evaluate's efficiency numbers, the report's decision section, DINO and aesthetic scorers and the
model card's base reference, on controlled inputs (tiny models built once per session)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lora_factory.report_decision import END, PENDING, START, decision_section, with_decision
from tasks.evaluate.efficiency import (
    MemoryProbe,
    efficiency_metrics,
    latency_percentiles,
    mode_record,
)


def test_latency_percentiles_on_known_numbers() -> None:
    got = latency_percentiles([float(v) for v in range(1, 101)])  # 1..100 s
    assert got == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01})
    assert latency_percentiles([2.0, float("nan")]) == {"p50": 2.0, "p95": 2.0, "p99": 2.0}
    assert latency_percentiles([]) == {"p50": None, "p95": None, "p99": None}
    # one slow image moves p99 and p95, not the median
    tail = latency_percentiles([1.0] * 99 + [11.0])
    assert tail["p50"] == 1.0 and tail["p99"] == pytest.approx(1.1) and tail["p95"] == 1.0


def test_efficiency_metrics_are_flat_per_mode() -> None:
    eff = {"modes": {"base": mode_record([1.0, 3.0], 10.0), "fused": mode_record([], 0.0)}}
    flat = efficiency_metrics(eff)
    assert flat["latency_p50_s_base"] == 2.0 and flat["peak_memory_mib_base"] == 10.0
    assert "latency_p50_s_fused" not in flat and flat["peak_memory_mib_fused"] == 0.0


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux peak-RSS reset")
def test_cpu_memory_probe_sees_an_allocation_made_after_start() -> None:
    import torch

    probe = MemoryProbe(torch.device("cpu"))
    assert probe.kind == "rss_peak_delta"
    probe.start()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    assert probe.peak_mib() >= 48
    del block
    probe.start()  # a new measurement forgets the old peak
    assert probe.peak_mib() < 48


RECORD = {"concept": "lighthouse", "registered_model": "lighthouse", "version": "3", "aliases": ["champion"],
          "model_uri": "models:/lighthouse/3", "verdict": "promoted", "reason": "better than the champion",
          "reasons": [], "checks": [{"name": "fidelity_gain", "passed": True, "detail": "0.02 >= 0.0"},
                                    {"name": "diversity", "passed": False, "detail": "not measured", "skipped": True}]}


def test_decision_section_replaces_the_pending_one() -> None:
    report = f"<html><body><h1>x</h1>{decision_section(None)}<p>after</p></body></html>"
    assert PENDING in report
    done = with_decision(report, RECORD)
    assert PENDING not in done and done.count(START) == 1 and done.count(END) == 1
    assert "version <b>3</b>" in done and "models:/lighthouse/3" in done and "champion" in done
    assert "<td class='skipped'>skipped</td>" in done and done.endswith("<p>after</p></body></html>")
    again = with_decision(done, {**RECORD, "version": "4", "verdict": "rejected"})
    assert "version <b>4</b>" in again and "version <b>3</b>" not in again and "class='fail'>rejected" in again


def test_a_report_without_markers_gets_the_section_before_body_end() -> None:
    done = with_decision("<html><body><p>old</p></body></html>", RECORD)
    assert done.index("<p>old</p>") < done.index(START) < done.index("</body>")


def test_dino_embedding_is_registered_and_random_when_tiny(model_cache: Path) -> None:
    from PIL import Image

    from tasks.evaluate.embedders import load_embedder

    emb = load_embedder("dino", "tiny:clip", model_cache, refs={"dino": "tiny:dinov2"})
    assert emb.name == "dino" and emb.ref == "tiny:dinov2" and emb.random and emb.embed_texts is None
    red, blue = Image.new("RGB", (64, 48), (220, 30, 30)), Image.new("RGB", (64, 64), (20, 40, 230))
    rows = emb.embed_images([red, red.copy(), blue])
    assert rows.shape == (3, 32) and np.allclose(np.linalg.norm(rows, axis=1), 1.0)
    assert rows[0] @ rows[1] == pytest.approx(1.0) and rows[0] @ rows[2] < 0.999
    from lora_factory.errors import ModelUnavailableError

    with pytest.raises(ModelUnavailableError, match="models.dino_scorer is empty"):
        load_embedder("dino", "tiny:clip", model_cache)


def test_model_card_snippet_names_a_loadable_base(model_cache: Path) -> None:
    from lora_factory.models.refs import loadable_ref
    from training.model_card import render_model_card

    tiny = loadable_ref("tiny:sd", model_cache)
    assert (Path(tiny) / "model_index.json").is_file()  # what from_pretrained reads
    assert loadable_ref("stable-diffusion-v1-5/stable-diffusion-v1-5", model_cache) == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5")
    common = {"family": "sd15", "trigger_word": "lfstyle", "train_config": {}, "dataset": {}, "result": {},
              "files": {"diffusers": "pytorch_lora_weights.safetensors"}}
    card = render_model_card(base_ref="tiny:sd", load_from=tiny, **common)
    assert f'DiffusionPipeline.from_pretrained("{tiny}")' in card and 'from_pretrained("tiny:sd")' not in card
    assert "cannot read that reference" in card
    hub = render_model_card(base_ref="org/model", load_from="org/model", **common)
    assert 'from_pretrained("org/model")' in hub and "cannot read" not in hub


def _laion_v2_like(path: Path, dim: int) -> dict:
    """The LAION v2 predictor's layout (layers.0/2/4/6/7, dropout between, no activations), small."""
    import torch

    g = torch.Generator().manual_seed(3)
    sizes = [(0, dim, 8), (2, 8, 6), (4, 6, 4), (6, 4, 3), (7, 3, 1)]
    state = {}
    for i, n_in, n_out in sizes:
        state[f"layers.{i}.weight"] = torch.randn(n_out, n_in, generator=g)
        state[f"layers.{i}.bias"] = torch.randn(n_out, generator=g)
    torch.save(state, path)
    return state


def test_aesthetic_head_chains_a_laion_style_file(tmp_path: Path) -> None:
    import torch

    from lora_factory.errors import ConfigError
    from tasks.evaluate.aesthetic import aesthetic_scores, load_head, tiny_head

    state = _laion_v2_like(tmp_path / "head.pth", 32)
    emb = np.random.default_rng(0).normal(size=(5, 32))
    expected = torch.tensor(emb, dtype=torch.float32)
    for i in (0, 2, 4, 6, 7):  # what the original nn.Sequential does in eval mode
        expected = expected @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    got = aesthetic_scores(load_head(str(tmp_path / "head.pth"), 32), emb)
    assert got.shape == (5,) and np.allclose(got, expected[:, 0].numpy(), atol=1e-4)
    with pytest.raises(ConfigError, match="gives 512-dim image embeddings"):
        load_head(str(tmp_path / "head.pth"), 512)
    with pytest.raises(ConfigError, match="no such file"):
        load_head(str(tmp_path / "missing.pth"), 32)
    (tmp_path / "junk.pth").write_text("junk")
    with pytest.raises(ConfigError, match="not a readable state dict"):
        load_head(str(tmp_path / "junk.pth"), 32)
    a, b = tiny_head(32), load_head("tiny:aesthetic", 32)  # seeded: the same head every time
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))


def test_aesthetic_is_a_reference_score_only_when_configured() -> None:
    from lora_factory.config import EvaluateConfig
    from lora_factory.errors import ConfigError
    from tasks.evaluate.aesthetic import add_aesthetic, aesthetic_delta
    from tasks.evaluate.metrics import overall_score
    from tasks.evaluate.score import EmbeddingSet, Scored
    from tasks.evaluate.verdict import check_thresholds

    rows = np.eye(4, 32)
    sets = [EmbeddingSet("clip", rows, rows[::-1].copy(), np.zeros((0, 32)))]
    off = Scored()
    assert add_aesthetic(off, sets, EvaluateConfig()) == {} and aesthetic_delta(off) == {}
    on = Scored()
    assert add_aesthetic(on, sets, EvaluateConfig(aesthetic_head="tiny:aesthetic")) == {"aesthetic": "tiny:aesthetic"}
    delta = aesthetic_delta(on)["aesthetic_delta"]
    assert delta == pytest.approx(on.metrics["aesthetic"].lora - on.metrics["aesthetic"].base)
    assert len(on.per_sample["aesthetic"]["lora"]) == 4
    scores = {"fidelity_gain": 0.1, "aesthetic_delta": -5.0}
    assert overall_score(scores) == pytest.approx(0.1)  # never in the overall score
    assert check_thresholds(scores, EvaluateConfig(min_scores={})) == []  # nor in the verdict by default
    gated = check_thresholds(scores, EvaluateConfig(min_scores={"aesthetic_delta": 0.0}))
    assert [(t.score, t.passed) for t in gated] == [("aesthetic_delta", False)]
    with pytest.raises(ConfigError, match="add clip to evaluate.embeddings"):
        add_aesthetic(Scored(), [EmbeddingSet("pixels", rows, rows, rows)], EvaluateConfig(aesthetic_head="tiny:x"))


def test_report_shows_the_sample_progression_in_step_order(tmp_path: Path) -> None:
    from PIL import Image

    from tasks.evaluate.report_sections import progression_section

    grids = []
    for step, colour in ((10, "red"), (20, "green")):
        grids.append(tmp_path / f"step-{step:06d}.png")
        Image.new("RGB", (128, 64), colour).save(grids[-1])
    page = progression_section({"sample_progression": [str(p) for p in grids]})
    assert page.count("<img") == 2 and page.index("step-000010") < page.index("step-000020")
    assert "data:image" in page  # inlined: the report stays one file
    assert "No training samples" in progression_section({"sample_progression": []})
