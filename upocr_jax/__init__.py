"""upocr_jax: UPOCR (ICML 2024) in JAX/Flax NNX; see README.md for the layout."""
