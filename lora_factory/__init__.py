"""LoRA Factory kernel: config, run store, storage, tracking, model references, CLI."""

__version__ = "0.1.0"
