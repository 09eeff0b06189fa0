"""Technical quality: resolution, aspect ratio, blur, exposure, information. Pure array code."""

from __future__ import annotations

import numpy as np

from datatools.features import ImageFeatures
from lora_factory.config import CurateConfig

from .checks import Check, above, below


def quality_checks(f: ImageFeatures, cfg: CurateConfig) -> list[Check]:
    """The quality filters in the order a drop is attributed (first failing one names it):
    size, aspect, exposure, information, blur."""
    short = np.minimum(f.width, f.height).astype(np.float64)
    long = np.maximum(f.width, f.height).astype(np.float64)
    aspect = long / np.maximum(short, 1.0)
    clipped = f.dark_fraction + f.bright_fraction
    info = np.minimum(f.contrast / max(cfg.min_contrast or 1e-9, 1e-9),
                      f.entropy / max(cfg.min_entropy or 1e-9, 1e-9))
    checks = [
        below("min_side", "too_small", short, cfg.min_side,
              "shorter side {score:.0f} px < curate.min_side={limit:.0f}"),
        above("max_pixels", "too_large", (f.width.astype(np.float64) * f.height), cfg.max_pixels,
              "{score:.0f} pixels > curate.max_pixels={limit:.0f}"),
        above("max_aspect", "bad_aspect", aspect, cfg.max_aspect,
              "aspect ratio {score:.2f} > curate.max_aspect={limit}"),
        below("min_brightness", "too_dark", f.brightness, cfg.min_brightness,
              "mean brightness {score:.1f} < curate.min_brightness={limit}"),
        above("max_brightness", "overexposed", f.brightness, cfg.max_brightness,
              "mean brightness {score:.1f} > curate.max_brightness={limit}"),
        above("max_clipped_fraction", "overexposed", clipped, cfg.max_clipped_fraction,
              "{score:.0%} of pixels pure black/white > curate.max_clipped_fraction={limit}"),
    ]
    if cfg.min_contrast is not None or cfg.min_entropy is not None:
        # One reason for two measures: a near-constant picture (low std) or one with a handful
        # of grey levels (low entropy). Score: the worse of the two as a multiple of its limit.
        low = np.zeros(f.n, bool)
        if cfg.min_contrast is not None:
            low |= f.contrast < cfg.min_contrast
        if cfg.min_entropy is not None:
            low |= f.entropy < cfg.min_entropy
        checks.append(Check("min_contrast/min_entropy", "low_information", low, info,
                            "near-constant image: contrast/entropy at {score:.2f}x the limit"))
    # Blur last: a black, blown-out or flat picture has no edges either, and its own reason is
    # the more useful answer.
    checks.append(below("min_sharpness", "blurry", f.laplacian_var, cfg.min_sharpness,
                        "variance of Laplacian {score:.1f} < curate.min_sharpness={limit}"))
    return [c for c in checks if c is not None]
