"""Weights: converters from official PyTorch checkpoints and weight directories."""
