"""Dataset tools below the stages: read a LoRA training folder, measure it, say what is wrong.

Same layer as ``training``: imports only the kernel (``lora_factory``). The curate and label
stages use its pure pieces (image features, duplicate resolution, caption formatting), and
``lora-factory inspect`` (the dataset doctor) and the factory's dataset gate are built from it.
One job per module: ``safezip`` and ``readers`` (layouts in), ``features``, ``dedup``,
``image_dedup``, ``captions``, ``thumbs`` (shared with curate and label), ``measure`` and
``cache`` (per-file measures keyed by content), ``facts`` (derived columns), ``findings``,
``scores``, ``embedmap``, ``doctor`` (the whole diagnosis), ``narrative`` (its optional LLM
paragraph), ``dashboard`` (HTML), ``fix`` (the cleaned copy), ``gate`` (minimums), ``provenance``
(a folder as crawl items, ``run --dataset``).
"""
