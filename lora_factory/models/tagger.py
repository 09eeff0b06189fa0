"""A small instruction-following LM that turns captions into tags for the label stage.

Why greedy decoding: a run with the same inputs and seed must give the same labels, so sampling
settings shipped in a model's generation config (Qwen2.5 samples by default) are overridden.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


class Tagger:
    """Chat-formatted prompt in, the model's reply (new tokens only) out."""

    def __init__(self, model: Any, tokenizer: Any, device: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device

    @classmethod
    def from_dir(cls, path: Path, device: str = "cpu") -> Tagger:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.float32 if device == "cpu" else "auto"
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
        return cls(model, AutoTokenizer.from_pretrained(path), device)

    def _encode(self, messages: list[dict[str, str]]) -> Any:
        if self.tokenizer.chat_template is None:  # a base model: the messages as plain text
            return self.tokenizer("\n\n".join(m["content"] for m in messages), return_tensors="pt")
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )

    def generate(self, prompt: str, max_new_tokens: int = 32, system: str | None = None) -> str:
        """The reply to ``prompt`` (optionally after a ``system`` message), decoded greedily."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        return self.chat(messages, max_new_tokens)

    def chat(self, messages: list[dict[str, str]], max_new_tokens: int = 32) -> str:
        """The reply to a conversation (``role``/``content`` messages, the last one the user's),
        decoded greedily: a retry can show the model its previous answer and what was wrong."""
        import torch

        inputs = self._encode(messages).to(self.device)
        config = copy.deepcopy(self.model.generation_config)
        config.do_sample = False
        config.temperature = config.top_p = config.top_k = None  # sampling-only knobs
        config.max_new_tokens = max_new_tokens
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=config)
        return self.tokenizer.decode(
            out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        ).strip()
