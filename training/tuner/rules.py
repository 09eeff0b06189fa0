"""The community's documented defaults (one table, with sources) and the statistics rules.

Every constant a rule uses lives here. Each rule is monotone in its statistic and bounded, so
more images never mean fewer steps and more diversity never means a lower rank
(``tests/test_tuner.py`` checks both). ``defaults_markdown()`` renders the table the README
shows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .inputs import STYLE_DOMAINS, TuneStats

SOURCES: dict[str, tuple[str, str]] = {
    "kohya-sd": ("kohya-ss/sd-scripts, docs/train_network.md",
                 "https://github.com/kohya-ss/sd-scripts/blob/main/docs/train_network.md"),
    "kohya-sdxl": ("kohya-ss/sd-scripts, docs/sdxl_train_network_advanced.md",
                   "https://github.com/kohya-ss/sd-scripts/blob/main/docs/sdxl_train_network_advanced.md"),
    "kohya-gui": ("bmaltais/kohya_ss, docs/LoRA/top_level.md (SDXL LoRA: a GPU with at least 12 GB)",
                  "https://github.com/bmaltais/kohya_ss/blob/master/docs/LoRA/top_level.md"),
    "diffusers-lora": ("diffusers, training/lora docs and train_text_to_image_lora.py",
                       "https://huggingface.co/docs/diffusers/training/lora"),
    "diffusers-sdxl": ("diffusers PR #4470, SDXL DreamBooth LoRA in under 16 GB",
                       "https://github.com/huggingface/diffusers/pull/4470"),
    "diffusers-flux": ("diffusers, examples/dreambooth/README_flux.md (LoRA rank 16, lr 1e-4, 8-bit Adam)",
                       "https://github.com/huggingface/diffusers/blob/main/examples/dreambooth/README_flux.md"),
    "kohya-flux": ("kohya-ss/sd-scripts, docs/flux_train_network.md (guidance 1.0, flux_shift sampling)",
                   "https://github.com/kohya-ss/sd-scripts/blob/sd3/docs/flux_train_network.md"),
    "diffusers-sd3": ("diffusers, examples/dreambooth/README_sd3.md (SD3 / SD3.5 LoRA, logit-normal timesteps)",
                      "https://github.com/huggingface/diffusers/blob/main/examples/dreambooth/README_sd3.md"),
    "kohya-sd3": ("kohya-ss/sd-scripts, docs/sd3_train_network.md (SD3.5 LoRA: rank 16, lr 1e-4)",
                  "https://github.com/kohya-ss/sd-scripts/blob/sd3/docs/sd3_train_network.md"),
    "min-snr": ("Hang et al. 2023, Efficient Diffusion Training via Min-SNR Weighting (gamma 5)",
                "https://arxiv.org/abs/2303.09556"),
    "offset-noise": ("Crosslabs 2023, Diffusion with Offset Noise", "https://www.crosslabs.org/blog/diffusion-with-offset-noise"),
    "steps": ("kohya-style step arithmetic: images x repeats x epochs / batch (e.g. 15 x 10 x 10 = 1500 for a face)",
              "https://www.codesyllabus.com/lessons/digitalMarketing/AIArtDirection/TrainingCustomModels"),
    "tiny": ("this repository: the tiny random-init models learn at 1e-3 in tens of steps (configs/profiles/tiny.yaml)", ""),
}


@dataclass(frozen=True)
class Prior:
    """A family's starting point, before the statistics adjust it."""

    rank: int
    alpha_ratio: float  # alpha = rank x this
    learning_rate: float  # UNet LoRA
    text_encoder_lr: float
    optimizer: str  # on a GPU (the CPU gets plain AdamW: bitsandbytes is CUDA-minded)
    mixed_precision: str  # on a GPU
    batch_size: int
    effective_batch: int  # batch x gradient accumulation
    image_repeats_per_epoch: int  # samples an epoch aims at, whatever the image count
    epochs: int
    min_steps: int
    max_steps: int
    noise_offset: float  # for photographs (dark and bright scenes)
    sources: tuple[str, ...]


# Every tiny model trains alike: a few fast steps on the CPU, whatever its family.
_TINY = Prior(rank=4, alpha_ratio=1.0, learning_rate=1e-3, text_encoder_lr=5e-4, optimizer="adamw",
              mixed_precision="no", batch_size=2, effective_batch=2, image_repeats_per_epoch=16, epochs=4,
              min_steps=10, max_steps=200, noise_offset=0.0, sources=("tiny",))
PRIORS: dict[str, Prior] = {
    "sd15": Prior(rank=16, alpha_ratio=0.5, learning_rate=1e-4, text_encoder_lr=5e-5, optimizer="adamw8bit",
                  mixed_precision="fp16", batch_size=1, effective_batch=4, image_repeats_per_epoch=300, epochs=10,
                  min_steps=300, max_steps=6000, noise_offset=0.05,
                  sources=("kohya-sd", "diffusers-lora", "steps", "offset-noise")),
    "sdxl": Prior(rank=32, alpha_ratio=0.5, learning_rate=1e-4, text_encoder_lr=1e-5, optimizer="adamw8bit",
                  mixed_precision="bf16", batch_size=1, effective_batch=4, image_repeats_per_epoch=300, epochs=10,
                  min_steps=300, max_steps=6000, noise_offset=0.05,
                  sources=("kohya-sdxl", "kohya-gui", "diffusers-sdxl", "steps", "offset-noise")),
    "tiny-sd15": _TINY,
    "tiny-sdxl": _TINY,
    # Flux: no offset noise (a DDPM fix; flow matching reaches pure noise at sigma 1).
    "flux": Prior(rank=16, alpha_ratio=1.0, learning_rate=1e-4, text_encoder_lr=5e-5, optimizer="adamw8bit",
                  mixed_precision="bf16", batch_size=1, effective_batch=4, image_repeats_per_epoch=300, epochs=10,
                  min_steps=300, max_steps=4000, noise_offset=0.0, sources=("diffusers-flux", "kohya-flux", "steps")),
    "tiny-flux": _TINY,
    # SD3.5: flow matching like Flux (no offset noise).
    "sd3": Prior(rank=16, alpha_ratio=1.0, learning_rate=1e-4, text_encoder_lr=5e-5, optimizer="adamw8bit",
                 mixed_precision="bf16", batch_size=1, effective_batch=4, image_repeats_per_epoch=300, epochs=10,
                 min_steps=300, max_steps=4000, noise_offset=0.0, sources=("diffusers-sd3", "kohya-sd3", "steps")),
    "tiny-sd3": _TINY,
}

# Task presets as rank multipliers of the family rank (at rank 16: face 16 / object 8 / style 16).
TASK_RANK = {"subject": 1.0, "style": 1.0, "concept": 0.5}
TASK_CAPTION_DROPOUT = {"subject": 0.05, "style": 0.1, "concept": 0.05}
RANK_BOUNDS = (4, 128)
# Diversity (mean pairwise cosine distance) -> rank: each signal scored (d - centre) / width,
# the mean clipped to [-1, 1] scales the rank by 2^score (x0.5 .. x2), to a power of two.
DIVERSITY_SCALE = {"text_diversity": (0.6, 0.2), "visual_diversity": (0.35, 0.15)}
CAPTION_DROPOUT_MAX = 0.2
MISSING_CAPTION_DROPOUT = 0.1  # added x (1 - caption coverage): images without a caption teach the trigger
SHUFFLE_TAGS_FROM = 3.0  # comma-separated tags per caption that make a caption a tag list
WARMUP_SHARE = 0.05  # of the total steps
CHECKPOINTS_PER_RUN = 4
VALIDATION = {"min_images": 20, "min_steps": 200, "split": 0.1, "window": 3}
SAMPLES_FROM_STEPS = 200  # shorter runs get no sample grids
MIN_SNR_GAMMA = 5.0
PHOTO_DOMAINS = ("photo", "3d")
ATTENTION = ("to_k", "to_q", "to_v", "to_out.0")


def power_of_two(x: float) -> int:
    return int(2 ** round(math.log2(max(x, 1.0))))


def diversity_score(stats: TuneStats) -> float | None:
    """Mean standardised diversity of the signals there are, clipped to [-1, 1]; None: none."""
    scores = [(value - centre) / width for name, (centre, width) in DIVERSITY_SCALE.items()
              if (value := getattr(stats, name)) is not None and math.isfinite(value)]
    return max(-1.0, min(1.0, sum(scores) / len(scores))) if scores else None


def task_of(stats: TuneStats, override: str | None) -> tuple[str, str]:
    """(task type, where it came from): the setting, the labels, or the estimated domain."""
    if override:
        return override, "tune.task_type"
    if stats.task_type:
        return stats.task_type, "the labels' concept summary"
    if stats.domain in STYLE_DOMAINS:
        return "style", f"the images look like {stats.domain} (curate's estimated domain)"
    return "subject", f"the images look like {stats.domain or 'photographs'} (curate's estimated domain)"


def rank_for(prior: Prior, task: str, stats: TuneStats) -> tuple[int, str]:
    """Family rank x task preset x 2^diversity score, a power of two within RANK_BOUNDS."""
    base = prior.rank * TASK_RANK[task]
    score = diversity_score(stats)
    raw = base * 2 ** (score or 0.0)
    rank = max(RANK_BOUNDS[0], min(RANK_BOUNDS[1], power_of_two(raw)))
    why = f"family prior {prior.rank} x {TASK_RANK[task]:g} for a {task} task"
    if score is not None:
        why += f", x 2^{score:+.2f} for the dataset's diversity"
    return rank, why


def steps_for(prior: Prior, num_images: int) -> tuple[int, int, str]:
    """(total optimizer steps, repeats, why). An epoch shows every image at least once and
    aims at ``image_repeats_per_epoch`` samples; ``epochs`` of those at the family's effective
    batch, bounded. Non-decreasing in the image count."""
    per_epoch = max(num_images, prior.image_repeats_per_epoch)
    raw = math.ceil(prior.epochs * per_epoch / prior.effective_batch)
    steps = max(prior.min_steps, min(prior.max_steps, raw))
    repeats = max(1, round(prior.image_repeats_per_epoch / max(num_images, 1)))
    why = (f"{prior.epochs} epochs of max({num_images} images, {prior.image_repeats_per_epoch} image-repeats) "
           f"at an effective batch of {prior.effective_batch} = {raw}")
    if steps != raw:
        why += f", bounded to [{prior.min_steps}, {prior.max_steps}]"
    return steps, repeats, why


def caption_dropout_for(task: str, coverage: float) -> tuple[float, str]:
    value = min(CAPTION_DROPOUT_MAX, TASK_CAPTION_DROPOUT[task] + MISSING_CAPTION_DROPOUT * (1 - coverage))
    return round(value, 3), (f"{TASK_CAPTION_DROPOUT[task]:g} for a {task} task + {MISSING_CAPTION_DROPOUT:g} x "
                             f"{1 - coverage:.2f} of images without a caption")


def defaults_markdown() -> str:
    """The community-defaults table (README's Tuner section shows this text)."""
    lines = ["| family | rank (alpha) | UNet / TE lr | optimizer, precision | batch (effective) | "
             "steps rule | noise offset (photos) | sources |", "|---|---|---|---|---|---|---|---|"]
    for name, p in PRIORS.items():
        cites = "; ".join(f"[{SOURCES[s][0]}]({SOURCES[s][1]})" if SOURCES[s][1] else SOURCES[s][0]
                          for s in p.sources)
        lines.append(
            f"| {name} | {p.rank} ({p.rank * p.alpha_ratio:g}) | {p.learning_rate:g} / {p.text_encoder_lr:g} | "
            f"{p.optimizer}, {p.mixed_precision} | {p.batch_size} ({p.effective_batch}) | "
            f"{p.epochs} x max(N, {p.image_repeats_per_epoch}) / {p.effective_batch}, in [{p.min_steps}, {p.max_steps}] | "
            f"{p.noise_offset:g} | {cites} |")
    lines.append("")
    lines.append(f"Task presets (rank multipliers): subject (a face, a person) x{TASK_RANK['subject']:g}, "
                 f"concept (an object) x{TASK_RANK['concept']:g}, style x{TASK_RANK['style']:g} — face 16 / "
                 f"object 8 / style 16 at rank 16. Min-SNR gamma {MIN_SNR_GAMMA:g} "
                 f"([{SOURCES['min-snr'][0]}]({SOURCES['min-snr'][1]})).")
    return "\n".join(lines) + "\n"
