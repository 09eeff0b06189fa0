"""Peak memory of a training config on a model family, and the fit to a budget.

The estimate adds what a step holds at its peak: the frozen weights in their dtype (the VAE
stays fp32, as the trainer keeps it), the LoRA parameters, their gradients and optimizer
states (fp32), the larger of the denoiser's activations kept for backward and the VAE's
transient while it encodes a batch, and the runtime's own working memory. What is measured and
what is assumed is said in the README's Tuner section.

Two phases when the text-embedding cache is on and the family frees its text encoders after
caching (T5-XXL and the CLIPs for Flux and SD3, ``training.conditioning.Conditioner.unload_encoders``):
first every caption is encoded with the text encoders and the VAE loaded (the denoiser is loaded
only after the encoders are freed, ``training.setup.encoders_before_denoiser``; with prior
preservation the whole pipeline is loaded first, to make the class images), then the steps run
without the encoders. The peak is the larger of the two phases, not their sum.

A quantised base (``train.base_quantization``: bitsandbytes NF4 or int8) stores the denoiser's
weights in ``QUANTIZED_BYTES`` a weight; the LoRA, its gradients and optimizer states stay fp32.
On a GPU these are estimates, not measurements (no GPU here): the README compares them with
other trainers' published figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lora_factory.config import TrainConfig
from lora_factory.errors import ConfigError

from .families import GIB, MIB, FamilyRow

# Optimizer state bytes per trainable (fp32) parameter: AdamW two fp32 moments; bitsandbytes'
# 8-bit AdamW two uint8 moments (tensors under 4096 elements stay 32-bit, plus a 2 KiB map per
# tensor: more for tiny LoRAs); Prodigy four fp32 states (a bound: its copy of the initial
# weights skips some). tests/test_tuner_memory.py measures all three.
OPTIMIZER_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16}
# The runtime's own working memory for a training step. CPU: measured (bench/tune.py: what a
# tiny UNet's step holds beyond its tensors). CUDA: the context, kernels and cuBLAS workspace,
# plus the caching allocator's slack; an assumption (no GPU here), checked only against the
# published figures in the README.
RUNTIME_BYTES = {"cpu": 6 * MIB, "cuda": 600 * MIB}
# Bytes per denoiser weight loaded quantised (train.base_quantization): bitsandbytes NF4 packs two
# weights a byte plus a block scale (double-quantised: ~0.127 bits a weight); int8 one byte plus a
# scale per row. Layers bitsandbytes keeps in 16 bit (norms, embeddings) are under 1% for Flux.
QUANTIZED_BYTES = {"nf4": 0.52, "int8": 1.01}
CUDA_ALLOCATOR_SLACK = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at a training step's peak, by part."""

    weights: int
    lora: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int
    activations_from: str  # "denoiser" or "vae" (whichever step holds more)
    freed_encoders: int = 0  # text encoders freed before the steps (held only while encoding captions)
    encode_runtime: int = 0  # the runtime's memory in the encoding phase
    # The other frozen weights held while the captions are encoded: the VAE, and the denoiser too
    # when it is loaded first (prior preservation); 0 without an encoding phase.
    encode_weights: int = 0

    @property
    def train_total(self) -> int:
        """The steps' peak (``weights`` without the freed encoders)."""
        return self.weights + self.lora + self.gradients + self.optimizer + self.activations + self.runtime

    @property
    def encode_total(self) -> int:
        """The caption-encoding phase before the encoders are freed: the text encoders and the
        frozen weights loaded with them, no LoRA yet (one caption's encoder activations are small
        beside the weights); 0 without it."""
        return self.encode_weights + self.freed_encoders + self.encode_runtime if self.freed_encoders else 0

    @property
    def total(self) -> int:
        return max(self.train_total, self.encode_total)

    @property
    def peak_phase(self) -> str:
        return "encoding captions" if self.encode_total > self.train_total else "training steps"

    @property
    def parameters_and_optimizer(self) -> int:
        return self.weights + self.lora + self.gradients + self.optimizer

    def gib(self) -> float:
        return self.total / GIB

    def table(self) -> list[tuple[str, float]]:
        """(part, GiB) rows for the rationale."""
        return [("frozen weights", self.weights / GIB), ("LoRA parameters", self.lora / GIB),
                ("gradients", self.gradients / GIB), ("optimizer states", self.optimizer / GIB),
                (f"activations ({self.activations_from})", self.activations / GIB),
                ("runtime", self.runtime / GIB), *self._encode_rows(), ("total", self.total / GIB)]

    def _encode_rows(self) -> list[tuple[str, float]]:
        if not self.freed_encoders:
            return []
        return [("training steps (freed encoders not held)", self.train_total / GIB),
                ("text encoders freed after caching", self.freed_encoders / GIB),
                ("encoding captions (text encoders, VAE; no LoRA)", self.encode_total / GIB),
                (f"peak phase: {self.peak_phase}", self.total / GIB)]


def precision_of(cfg: TrainConfig) -> str:
    return "full" if cfg.mixed_precision == "no" else "half"


def lora_parameters(cfg: TrainConfig, row: FamilyRow) -> int:
    """Trainable LoRA parameters: per target module name from the family's table (a name the
    table lacks counts as the largest known one, so the estimate errs high)."""
    largest = max(row.lora_per_rank.values())
    targets = cfg.target_modules if cfg.target_modules is not None else row.default_targets
    unet = sum(row.lora_per_rank.get(name, largest) for name in targets) * cfg.rank
    text = row.text_encoder_lora_per_rank * cfg.rank if cfg.train_text_encoder else 0
    return unet + text


def on_cuda(cfg: TrainConfig) -> bool:
    return cfg.device != "cpu"


def text_cache_on(cfg: TrainConfig) -> bool:
    """The trainer's rule (``training.conditioning.make_conditioner``; the train task always gives
    it a cache folder): cached unless the text encoder trains or the tags shuffle."""
    return cfg.cache_text_embeddings and not cfg.train_text_encoder and not cfg.shuffle_tags


def estimate(cfg: TrainConfig, row: FamilyRow) -> MemoryEstimate:
    """The peak of ``cfg`` on ``row`` (bytes, by part): a training step's, or the caption-encoding
    phase's when that holds more."""
    weight_bytes = 4 if precision_of(cfg) == "full" else 2
    denoiser = int(row.denoiser_params * QUANTIZED_BYTES.get(cfg.base_quantization, weight_bytes))
    freed = int(row.freed_encoder_params * weight_bytes) if text_cache_on(cfg) else 0
    weights = denoiser + int(row.text_encoder_params * weight_bytes + row.vae_params * 4) - freed
    # Encoding phase: the VAE and the text encoders kept; the denoiser only when loaded first.
    encode_weights = (weights if cfg.prior_preservation else weights - denoiser) if freed else 0
    lora = lora_parameters(cfg, row)
    samples = cfg.batch_size * (2 if cfg.prior_preservation else 1)
    kept = row.activation_bytes(precision_of(cfg), cfg.gradient_checkpointing, cfg.resolution, samples)
    vae = row.vae_encode_bytes(cfg.resolution, cfg.batch_size)
    activations, source = (kept, "denoiser") if kept >= vae else (vae, "VAE encoding a batch")
    parts = {"weights": weights, "lora": lora * 4, "gradients": lora * 4,
             "optimizer": lora * OPTIMIZER_BYTES[cfg.optimizer], "activations": activations}
    return MemoryEstimate(**parts, runtime=_runtime(cfg, sum(parts.values())), activations_from=source,
                          freed_encoders=freed, encode_weights=encode_weights,
                          encode_runtime=_runtime(cfg, encode_weights + freed) if freed else 0)


def _runtime(cfg: TrainConfig, tensor_bytes: int) -> int:
    """The runtime's working memory, plus the CUDA caching allocator's slack on the tensors."""
    if on_cuda(cfg):
        return RUNTIME_BYTES["cuda"] + int(CUDA_ALLOCATOR_SLACK * tensor_bytes)
    return RUNTIME_BYTES["cpu"]


@dataclass(frozen=True)
class Fit:
    """The config that fits, its estimate, and each change made to get there."""

    config: TrainConfig
    estimate: MemoryEstimate
    changes: list[tuple[str, Any, str]]  # (key, new value, why)


def _ladder(cfg: TrainConfig, row: FamilyRow, pinned: set[str]) -> list[tuple[TrainConfig, tuple[str, Any, str]]]:
    """Ever smaller configs, each one change away from the previous: 8-bit AdamW (CUDA only),
    gradient checkpointing, halving the batch (accumulation keeps the effective batch), then
    lowering the resolution by bucket steps. Every rung needs no more memory than the one
    before, so a smaller budget never gets a larger estimate."""
    rungs: list[tuple[TrainConfig, tuple[str, Any, str]]] = []
    cur = cfg
    if cur.optimizer == "adamw" and on_cuda(cur) and "optimizer" not in pinned:
        cur = cur.model_copy(update={"optimizer": "adamw8bit"})
        rungs.append((cur, ("optimizer", "adamw8bit", "8-bit AdamW states take a quarter of the memory")))
    if not cur.gradient_checkpointing and "gradient_checkpointing" not in pinned:
        cur = cur.model_copy(update={"gradient_checkpointing": True})
        rungs.append((cur, ("gradient_checkpointing", True, "recomputes activations in backward (~30% slower)")))
    while cur.batch_size > 1 and "batch_size" not in pinned:
        effective = cur.batch_size * cur.gradient_accumulation_steps
        batch = cur.batch_size // 2
        accum = cur.gradient_accumulation_steps if "gradient_accumulation_steps" in pinned else -(-effective // batch)
        cur = cur.model_copy(update={"batch_size": batch, "gradient_accumulation_steps": accum})
        rungs.append((cur, ("batch_size", batch, f"halved; {accum} accumulation steps keep the effective batch")))
    while cur.resolution - row.bucket_step >= row.min_resolution and "resolution" not in pinned:
        cur = cur.model_copy(update={"resolution": cur.resolution - row.bucket_step})
        rungs.append((cur, ("resolution", cur.resolution, f"lowered one bucket step ({row.bucket_step} px)")))
    return rungs


def fit_to_budget(cfg: TrainConfig, row: FamilyRow, budget_gib: float | None, pinned: set[str]) -> Fit:
    """The first config on the ladder whose estimate fits ``budget_gib``; one line naming the
    smallest budget that works when none does."""
    first = estimate(cfg, row)
    if budget_gib is None or first.gib() <= budget_gib:
        return Fit(cfg, first, [])
    changes: list[tuple[str, Any, str]] = []
    est, last = first, cfg
    for last, change in _ladder(cfg, row, pinned):
        est = estimate(last, row)
        changes.append(change)
        if est.gib() <= budget_gib:
            return Fit(last, est, _last_value_per_key(changes))
    smallest = -(-est.total * 2 // GIB) / 2  # rounded up to half a GiB
    kept = sorted(pinned & {"optimizer", "gradient_checkpointing", "batch_size", "resolution", "rank"})
    because = f" with your pinned {', '.join(kept)}" if kept else ""
    raise ConfigError(
        f"tune.gpu_gb {budget_gib:g} is too small for any {row.name} config{because}: the smallest "
        f"(rank {cfg.rank}, {describe(last)}) needs {est.gib():.1f} GiB; "
        f"set tune.gpu_gb (--gpu-gb) to {smallest:g} or more")


def describe(cfg: TrainConfig) -> str:
    return (f"{cfg.resolution} px, batch {cfg.batch_size}, "
            f"{'with' if cfg.gradient_checkpointing else 'without'} gradient checkpointing, {cfg.optimizer}")


def _last_value_per_key(changes: list[tuple[str, Any, str]]) -> list[tuple[str, Any, str]]:
    """One entry per key (its final value), in the order the keys were first changed."""
    last = {key: (key, value, why) for key, value, why in changes}
    return [last[key] for key in dict.fromkeys(k for k, _, _ in changes)]

