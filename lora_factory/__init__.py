"""LoRA Factory kernel: config, run store, storage, tracking, model references (no upper layer)."""

__version__ = "0.1.0"
