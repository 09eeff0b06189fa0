"""Serving: the HTTP service of each concept's champion LoRA, the feedback store, the retrain
triggers. Heavy libraries (torch, diffusers) load only when the first image is generated."""
