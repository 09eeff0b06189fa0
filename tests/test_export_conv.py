"""LoRAs on the convolutions as well as the attention: every module of the saved files loads.

``load_lora_weights`` picks a component's key naming from its first key (sorted: ``conv_in`` and
``proj_in`` come before the attention projections), so a file mixing PEFT ``lora_A`` and diffusers'
``lora.down`` names loses the modules named the other way, silently. Files are one naming now; the
portability check names a mixed file's ignored modules; ``init_from_lora`` still reads old files;
SDXL's kohya file names the added-conditioning MLP as kohya does, so diffusers maps it back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lora_factory.config import TrainConfig
from tasks.evaluate.findings import lora_modules
from tasks.evaluate.portability import applied_modules, check_keys
from training.families import family_for
from training.lora import add_loras, init_from_lora, lora_state, save_lora

# conv_in and proj_in sort before the attention projections: the file's first keys.
TARGETS = ["conv_in", "proj_in", "conv1", "conv2", "to_q", "to_k", "to_v", "to_out.0"]
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def _adapted(ref: str, family: str, targets: list[str], cache: Path) -> Any:
    """``ref`` with a rank-4 LoRA on ``targets`` whose up weights are random (a trained one's stand-in)."""
    from lora_factory.models import load_pipeline

    pipe = load_pipeline(ref, family, cache)
    add_loras(pipe, TrainConfig(rank=4, alpha=4, target_modules=targets, device="cpu"), seed=0,
              family=family_for(family))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return pipe


def _unet_out(pipe: Any, sdxl: bool = False) -> torch.Tensor:
    unet = pipe.unet
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 8, unet.config.cross_attention_dim, generator=g)
    added = None
    if sdxl:
        time_dim = 6 * unet.config.addition_time_embed_dim
        text = torch.randn(1, unet.add_embedding.linear_1.in_features - time_dim, generator=g)
        added = {"text_embeds": text, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), context, added_cond_kwargs=added).sample


def _mixed(pipe: Any, out: Path) -> Path:
    """The file lora-factory wrote before: ``convert_state_dict_to_diffusers`` renames only the
    attention projections (``lora.down``/``lora.up``), the rest keeps ``lora_A``/``lora_B``."""
    from diffusers.utils import convert_state_dict_to_diffusers

    state = convert_state_dict_to_diffusers(lora_state(pipe)["unet"])
    save_file({f"unet.{k}": v.contiguous() for k, v in state.items()}, str(out))
    return out


@pytest.fixture(scope="module")
def conv_lora(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """The adapted pipeline, its saved file and the same weights in the old mixed naming."""
    pipe = _adapted("tiny:sd", "sd15", TARGETS, model_cache)
    folder = tmp_path_factory.mktemp("conv-lora")
    return pipe, save_lora(pipe, folder), _mixed(pipe, folder / "mixed.safetensors")


@pytest.fixture(scope="module")
def base(model_cache: Path) -> Any:
    from lora_factory.models import load_pipeline

    return load_pipeline("tiny:sd", "sd15", model_cache)


def _load(pipe: Any, file: Path) -> None:
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(file.parent), weight_name=file.name)


def test_every_module_loads_and_the_conv_and_attention_parts_both_act(conv_lora: tuple[Any, Path, Path],
                                                                      base: Any) -> None:
    adapted, file, _ = conv_lora
    with safe_open(str(file), "pt") as f:
        keys = list(f.keys())  # noqa: SIM118
    assert keys[0] == "unet.conv_in.lora_A.weight"  # a conv first: the case that lost the attention
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    modules = len(lora_modules(file)[0])
    assert modules == len(keys) // 2 > 0
    plain = _unet_out(base)
    _load(base, file)
    assert applied_modules(base) == modules
    loaded = _unet_out(base)
    torch.testing.assert_close(loaded, _unet_out(adapted))
    with torch.no_grad():  # the attention part off: the output moves, and still differs from base
        for name, p in base.unet.named_parameters():
            if "lora_B" in name and any(f".{t}." in name for t in ATTENTION):
                p.zero_()
    conv_only = _unet_out(base)
    base.unload_lora_weights()
    assert (conv_only - loaded).abs().max() > 1e-3
    assert (conv_only - plain).abs().max() > 1e-3
    assert check_keys(base, "sd15", file).ok


def test_a_mixed_naming_file_is_reported_with_the_modules_the_loader_drops(
    conv_lora: tuple[Any, Path, Path], base: Any, model_cache: Path, tmp_path: Path
) -> None:
    _, _, mixed = conv_lora
    report = check_keys(base, "sd15", mixed)
    attention = {n for n in lora_modules(mixed)[0] if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v")
                 or n.endswith("to_out.0")}
    assert report.fits and not report.ok and set(report.ignored) == attention
    assert "loader ignores" in report.line() and "\n" not in report.line()
    _load(base, mixed)  # what diffusers really does with it
    assert applied_modules(base) == report.modules - len(report.ignored)
    base.unload_lora_weights()
    # The same mix with an attention key first loads whole: only the first key decides.
    attention_first = _adapted("tiny:sd", "sd15", ["conv1", "to_q"], model_cache)
    fine = _mixed(attention_first, tmp_path / "attention-first.safetensors")
    again = check_keys(base, "sd15", fine)
    assert again.ok and again.ignored == []
    _load(base, fine)
    assert applied_modules(base) == again.modules
    base.unload_lora_weights()


def test_init_from_lora_reads_an_old_mixed_file_and_a_new_one(conv_lora: tuple[Any, Path, Path],
                                                              model_cache: Path) -> None:
    from lora_factory.models import load_pipeline

    adapted, file, mixed = conv_lora
    want = lora_state(adapted)["unet"]
    for source in (file, mixed):
        pipe = load_pipeline("tiny:sd", "sd15", model_cache)
        add_loras(pipe, TrainConfig(rank=4, alpha=4, target_modules=TARGETS, device="cpu"), seed=3,
                  family=family_for("sd15"))
        assert init_from_lora(pipe, source) == {"unet": len(want)}
        got = lora_state(pipe)["unet"]
        assert all(torch.equal(got[k], want[k]) for k in want), source.name


def test_sdxl_kohya_file_names_label_emb_and_loads_every_module(model_cache: Path, tmp_path: Path) -> None:
    from lora_factory.models import load_pipeline
    from training.export_kohya import save_kohya

    family = family_for("sdxl")
    adapted = _adapted("tiny:sdxl", "sdxl", ["to_q", "to_k", "linear_1", "linear_2"], model_cache)
    peft = {f"{c}.{k}": v for c, state in lora_state(adapted).items() for k, v in state.items()}
    kohya = save_kohya(peft, tmp_path / "kohya.safetensors", family, 4, 4.0, {})
    modules = lora_modules(kohya)[0]
    assert {"lora_unet_label_emb_0_0", "lora_unet_label_emb_0_2"} <= set(modules)
    assert not any("add_embedding" in m for m in modules)
    fresh = load_pipeline("tiny:sdxl", "sdxl", model_cache)
    assert check_keys(fresh, "sdxl", kohya).ok
    fresh.load_lora_weights(str(kohya.parent), weight_name=kohya.name)  # diffusers' kohya converter
    wrapped = {n for n, m in fresh.unet.named_modules() if hasattr(m, "lora_A")}
    assert {"add_embedding.linear_1", "add_embedding.linear_2"} <= wrapped
    assert applied_modules(fresh) == len(modules)
    torch.testing.assert_close(_unet_out(fresh, sdxl=True), _unet_out(adapted, sdxl=True))
