"""Training: the LoRATuner recommender, the dataset, the trainer loop and (later) export.

Imports stay lazy (no re-exports here) so that ``import training.tuner`` does not pull in torch
and diffusers for code that only needs a config recommendation.
"""
