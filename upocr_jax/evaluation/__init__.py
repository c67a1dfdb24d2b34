"""Evaluation: the eval loop and CLI, the official metrics, FID, trivial baselines."""
