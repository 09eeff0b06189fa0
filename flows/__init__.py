"""Prefect flows: compose the stage tasks, no stage logic."""
