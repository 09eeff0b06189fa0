"""Label: captions chosen by the image itself, LLM tags, caption review, licences in order.

One module per job: ``licenses`` (the allow-list, applied first), ``candidates`` (page texts),
``captioning`` (the transformers captioner and a VLM endpoint), ``rerank`` (CLIP picks the caption,
flags likely hallucinations), ``tagging`` (schema-checked tags and the concept summary, with the
``keywords`` MiniLM fallback), ``formatting`` (style, trigger word, traits, token budget),
``review`` (captions.csv out and back), ``export`` (the training folder and kohya TOML),
``stats``, ``datasheet``, ``report``; ``stage`` runs them in order and ``task`` is the Prefect wrapper.
The OpenAI-compatible client (concurrency, rate limit, retries, cache) is ``lora_factory.llm_client``,
in the kernel because the dataset doctor's narrative uses it too.
"""

from .stage import STAGE, LabelModels, LabelResult, label_items, run_label
from .task import label_task

__all__ = ["STAGE", "LabelModels", "LabelResult", "label_items", "label_task", "run_label"]
