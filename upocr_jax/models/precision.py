"""The mixed-precision policy of the model, and full precision for evaluation.

Training (``config.model``):

* parameters, gradients and optimizer state: always float32 (the layers keep
  float32 ``nnx.Param`` values and cast them at use);
* ``dtype``, the compute dtype: the operands of every matmul and convolution
  of the encoder, decoder and heads (bfloat16 on TPUs and recent GPUs);
* ``residual_dtype``: the residual stream, i.e. the maps that flow from block
  to block. It is the carry of a scanned stage, so every block casts its
  input and output to it (a ``lax.scan`` carry must keep one dtype). float32
  (the default) matches PyTorch autocast, where the post-norm residual adds
  run in float32; bfloat16 halves the activation memory of the residual
  stream;
* always float32, whatever the two say: LayerNorm (statistics and output),
  the softmax and the attention scores (accumulated in float32), the
  cosine-attention normalisation of q and k and its logit scale, the
  continuous position-bias MLP, the model outputs, the losses and the VGG
  Gram matrices (``train/losses.py``, at HIGHEST matmul precision).

Evaluation and prediction (:func:`full_precision`, :func:`eval_precision`)
run every matmul in float32 at HIGHEST precision, as the official evaluation
runs with TF32 off: a float32 view of the model (the same parameter arrays)
traced under ``jax.default_matmul_precision("highest")``. On TPUs the DEFAULT
precision of a float32 matmul is one bfloat16 pass, on Ampere+ GPUs TF32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}
# Matmul precision of evaluation and prediction (see the module docstring).
EVAL_MATMUL_PRECISION = "highest"
# Module attributes that hold a compute or residual dtype (layers.Dense,
# layers.Conv2d, swinv2.WindowAttention / SwinBlock).
_DTYPE_ATTRS = ("dtype", "residual_dtype")


@dataclasses.dataclass(frozen=True)
class Policy:
  """Compute and residual dtypes of the model (see the module docstring)."""
  compute: Any = jnp.float32
  residual: Any = jnp.float32

  @classmethod
  def from_config(cls, model_config: Any) -> "Policy":
    """The policy of ``config.model`` (``dtype``, ``residual_dtype``)."""
    return cls(compute=DTYPES[model_config.dtype],
               residual=DTYPES[model_config.get("residual_dtype", "float32")])


def full_precision(model: nnx.Module) -> nnx.Module:
  """A float32 view of ``model``: the same parameter arrays, every compute
  and residual dtype float32. ``model`` itself is unchanged."""
  graphdef, state = nnx.split(model)
  view = nnx.merge(graphdef, state)
  for _, module in nnx.iter_modules(view):
    for attr in _DTYPE_ATTRS:
      if getattr(module, attr, None) is not None:
        setattr(module, attr, jnp.float32)
  return view


@contextlib.contextmanager
def eval_precision() -> Iterator[None]:
  """Matmuls traced inside run at HIGHEST (full float32) precision."""
  with jax.default_matmul_precision(EVAL_MATMUL_PRECISION):
    yield
