"""Model references and loaders: every model role is a hub id, a local directory or ``tiny:<name>``.

Importing this package is cheap; torch, diffusers, transformers and open_clip are imported by the
functions that need them.
"""

from lora_factory.models.captioner import Captioner
from lora_factory.models.clip_scorer import ClipScorer
from lora_factory.models.loaders import (
    load_captioner,
    load_clip_scorer,
    load_dino_scorer,
    load_pipeline,
    load_pipeline_part,
    load_tagger,
    load_text_embedder,
)
from lora_factory.models.refs import ModelRef, parse_ref, resolve_ref, tiny_names
from lora_factory.models.tagger import Tagger
from lora_factory.models.tiny import TINY_MODELS, build_tiny, tiny_model_dir

__all__ = [
    "TINY_MODELS",
    "Captioner",
    "ClipScorer",
    "ModelRef",
    "Tagger",
    "build_tiny",
    "load_captioner",
    "load_clip_scorer",
    "load_dino_scorer",
    "load_pipeline",
    "load_pipeline_part",
    "load_tagger",
    "load_text_embedder",
    "parse_ref",
    "resolve_ref",
    "tiny_model_dir",
    "tiny_names",
]
