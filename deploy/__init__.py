"""Deployment: the promotion gate and the MLflow model registry."""
