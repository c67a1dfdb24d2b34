"""The window attention's score path: cosine scores, scale, bias, mask, softmax.

Swin-V2's attention per window is ``softmax(scale * cos(q, k) + bias + mask) v``
over (windows, heads, N, N) scores, N = window^2 tokens. Those scores are the
largest tensors of the model and the work on them is element-wise, so the
number of passes over them sets its speed on every backend.

Two formulations, chosen by ``config.model.attention_impl``:

* ``"reference"`` (default): the textbook order, ``jax.nn.softmax`` then the
  value einsum (normalises the N x N probabilities);
* ``"deferred"``: exponentiates the shifted scores, multiplies them by
  the values unnormalised and divides the (N, head_dim) result by the row sums:
  the same numbers up to float32 rounding, without the division pass over the
  N x N scores (head_dim is 16-32 here, N 64-256). Faster for the attention
  alone on the CPU, but not for the whole train step or inference there
  (benchmarks/README.md), so it is not the default.

Tests compare the two (tests/models/test_attention.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

IMPLS = ("deferred", "reference")


def cosine_normalize(t: Array, dtype) -> Array:
  """F.normalize over the last axis (t / max(||t||, 1e-12)), in float32."""
  t = t.astype(jnp.float32)
  # sqrt(max(|t|^2, eps^2)) equals max(|t|, eps) but has a finite gradient at
  # t = 0 (zero-padded tokens have all-zero keys).
  sq = jnp.sum(t * t, axis=-1, keepdims=True)
  return (t * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))).astype(dtype)


def attend(q: Array, k: Array, v: Array, scale: Array, bias: Array,
           mask: Array | None, dtype, impl: str = "reference") -> Array:
  """Scaled cosine attention of every window.

  Args:
    q, k, v: (batch, windows, N, heads, head_dim).
    scale: (heads,) multiplier of the cosine scores (the clamped exp(logit)).
    bias: (heads, N, N) position bias.
    mask: additive (windows, N, N) shift/padding mask, or None.
    dtype: the compute dtype of the two einsums' inputs.
    impl: one of IMPLS.

  Returns:
    (batch, windows, N, heads, head_dim) in ``v``'s dtype.
  """
  if impl not in IMPLS:
    raise ValueError(f"model.attention_impl: {impl!r} is not one of {IMPLS}")
  scores = jnp.einsum("bwnhd,bwmhd->bwhnm", cosine_normalize(q, dtype),
                      cosine_normalize(k, dtype),
                      preferred_element_type=jnp.float32)
  scores = scores * scale[:, None, None] + bias
  if mask is not None:
    scores = scores + mask[None, :, None]
  if impl == "reference":
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bwhnm,bwmhd->bwnhd", probs.astype(dtype), v)
  # Softmax is shift-invariant: the row max only keeps exp in range, so no
  # gradient flows through it.
  top = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  weights = jnp.exp(scores - top)
  total = jnp.sum(weights, axis=-1)                        # (b, w, h, n)
  out = jnp.einsum("bwhnm,bwmhd->bwnhd", weights.astype(dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / jnp.swapaxes(total, 2, 3)[..., None]).astype(v.dtype)
