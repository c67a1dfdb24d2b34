"""Inference: the Predictor API, tiling, post-processing and the predict CLI."""
