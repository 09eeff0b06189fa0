"""The output safety filter: diffusers' StableDiffusionSafetyChecker (tiny:safety, seeded) on each
generated image; the decision rule at a controlled threshold, and over HTTP a blocked output is a
451 without the image, recorded in the store and the metrics."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from deploy.serving.adapters import Image
from deploy.serving.app import build_app
from deploy.serving.safety import SafetyFilter, verdict
from deploy.serving.service import make_service
from lora_factory.profiles import location_config

from .serve_helpers import request, serve_in_thread

TOKEN = "test-token-0123456789abcdef"


def _picture() -> PILImage.Image:
    rng = np.random.default_rng(3)
    return PILImage.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))


class FixedPool:
    """Answers every generation with the same real PNG: the filter, not the model, is under test."""

    def __init__(self) -> None:
        buf = io.BytesIO()
        _picture().save(buf, format="PNG")
        self.png = buf.getvalue()

    def loaded(self) -> dict[str, str]:
        return {}

    def forget_checks(self) -> None:
        """Nothing cached to forget: the stand-in serves one fixed concept."""

    def generate(self, concept: str, prompt: str, seed: int, steps: int) -> Image:
        return Image(concept, "7", self.png)


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def test_the_threshold_decides_at_the_image_score(model_cache: Path) -> None:
    checker = SafetyFilter("tiny:safety", model_cache, adjustment=0.0)
    concept, special = checker.raw_scores(_picture())
    assert checker.raw_scores(_picture()) == (concept, special)  # deterministic
    # an adjustment just below / above minus the image's score flips the verdict
    below, above = -concept - 0.02, -concept + 0.02
    assert not verdict(concept, special, below).blocked
    assert verdict(concept, special, above).blocked
    assert verdict(concept, special, above).score == pytest.approx(
        0.02 + (0.01 if special + above > 0 else 0.0), abs=1e-5)
    # the special-care bump: 0.01 on every concept score once a special concept is over its bar
    assert verdict(-0.005, 0.5, 0.0).blocked and not verdict(-0.005, -0.5, 0.0).blocked


@pytest.mark.parametrize(("adjustment", "blocked"), [(2.0, True), (-2.0, False)])
def test_blocked_outputs_are_451_recorded_without_the_image(tmp_path: Path, model_cache: Path,
                                                            adjustment: float, blocked: bool) -> None:
    """±2 is past any cosine: every image blocked, or none."""
    (tmp_path / "models").symlink_to(model_cache)
    cfg = location_config({"home": str(tmp_path), "serve.safety_filter": True, "serve.rate_per_s": 0,
                           "models.safety_checker": "tiny:safety",
                           "serve.safety_adjustment": adjustment})
    svc = make_service(cfg, TOKEN, emit=lambda e: None, generate=False)
    svc.pool = FixedPool()  # type: ignore[assignment]
    body = {"prompt": "lfstyle, a boat", "concept": "boat", "seed": 1, "steps": 2}
    with serve_in_thread(build_app(svc)) as base:
        status, headers, raw = request("POST", f"{base}/generate", body)
        summary = json.loads(request("GET", f"{base}/admin/feedback/boat", token=TOKEN)[2])
        metrics = request("GET", f"{base}/metrics")[2].decode()
    svc.close()
    counted = re.search(r'^lora_serve_safety_blocked_total\{concept="boat"\} (\S+)$', metrics, re.M)
    if blocked:
        answer = json.loads(raw)
        assert status == 451 and headers["content-type"] == "application/json"
        assert answer["blocked"] is True and "serve.safety_filter" in answer["error"] and answer["score"] > 0
        assert summary["safety_blocked"] == 1 and counted and float(counted.group(1)) == 1.0
    else:
        assert status == 200 and raw.startswith(b"\x89PNG")
        assert summary["safety_blocked"] == 0 and counted is None
