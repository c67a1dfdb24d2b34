"""Shared by test_evaluate.py and test_predict.py: a tiny random checkpoint.

Random weights are drawn in numpy into an abstract (eval_shape) model: building
the tiny model eagerly or under jit takes ~15 s on two cores, this well under 2.
"""

import os

import numpy as np
from flax import nnx

from configs import upocr
from upocr_jax.weights import weight_dir
from upocr_jax.models import UPOCR


def tiny_config():
  """The tiny config with a small synthetic eval split (fast tests)."""
  config = upocr.get_config("tiny")
  config.data.synthetic.num_eval = 5  # 2 batches of 4, the last one padded.
  return config


def random_model(config=None, seed: int = 0) -> UPOCR:
  """A tiny UPOCR with random parameters (norm scales 1, biases 0)."""
  config = config or tiny_config()
  abstract = nnx.eval_shape(lambda: UPOCR(config.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(seed)
  pure = nnx.to_pure_dict(state)

  def fill(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out[k] = fill(v)
      elif k == "scale":
        out[k] = np.ones(v.shape, v.dtype)
      elif k == "bias":
        out[k] = np.zeros(v.shape, v.dtype)
      else:
        out[k] = (0.05 * rng.standard_normal(v.shape)).astype(v.dtype)
    return out
  nnx.replace_by_pure_dict(state, fill(pure))
  return nnx.merge(graphdef, state)


def random_weights_dir(root: str, config=None, seed: int = 0) -> str:
  """Writes a random tiny model as a weight directory under root; its path."""
  path = os.path.join(str(root), "weights")
  weight_dir.save_weights(path, random_model(config, seed))
  return path
