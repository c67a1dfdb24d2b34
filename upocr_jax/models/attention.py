"""The window attention's score path: cosine scores, scale, bias, mask, softmax.

Swin-V2's attention per window is ``softmax(scale * cos(q, k) + bias + mask) v``
over (windows, heads, N, N) scores, N = window^2 tokens. Those scores are the
largest tensors of the model and the work on them is element-wise, so the
number of passes over them sets its speed on every backend.

The tensors are head-major, (batch, windows, heads, N, head_dim): the two
einsums are then plain batched matmuls over the leading axes. With the heads
axis between the tokens and head_dim, XLA:CPU transposed q, k and v around
every einsum and ran the fused score/softmax/value kernel far slower
(benchmarks/README.md).

Three formulations, chosen by ``config.model.attention_impl``:

* ``"reference"``: the textbook order, ``scale * cos(q, k)``, then
  ``jax.nn.softmax`` and the value einsum;
* ``"folded"`` (default): the same with the per-head scale multiplied into the
  normalised queries (N x head_dim products) instead of the N x N scores;
  the scale's gradient then reduces over (N, head_dim), not (N, N). Equal to
  the reference up to float32 rounding;
* ``"deferred"``: ``"folded"``, and exponentiates the shifted scores,
  multiplies them by the values unnormalised and divides the (N, head_dim)
  result by the row sums, without the division pass over the N x N scores.

Tests compare the three (tests/models/test_attention.py).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array

IMPLS = ("deferred", "folded", "reference")
DEFAULT_IMPL = "folded"  # config.model.attention_impl when unset


def cosine_normalize(t: Array, dtype) -> Array:
  """F.normalize over the last axis (t / max(||t||, 1e-12)), in float32."""
  t = t.astype(jnp.float32)
  # sqrt(max(|t|^2, eps^2)) equals max(|t|, eps) but has a finite gradient at
  # t = 0 (zero-padded tokens have all-zero keys).
  sq = jnp.sum(t * t, axis=-1, keepdims=True)
  return (t * jax.lax.rsqrt(jnp.maximum(sq, 1e-24))).astype(dtype)


@jax.custom_vjp
def add_position_bias(scores: Array, bias: Array) -> Array:
  """``scores + bias`` for (..., heads, N, N) scores and a (heads, N, N) bias.

  The bias gradient sums the score gradient over every leading (batch,
  window) axis. XLA:CPU's fused reduction over those major axes ran
  single-threaded and was the slowest kernel of the train step; the same sum
  as a product with a ones vector is a matmul, several times faster there
  (benchmarks/README.md). HIGHEST keeps it a float32 sum on TPU and GPU too.
  """
  return scores + bias


def _add_position_bias_fwd(scores: Array, bias: Array):
  return scores + bias, None


def _add_position_bias_bwd(_, g: Array):
  lead = g.size // math.prod(g.shape[-3:])
  rows = g.reshape(lead, -1)
  d_bias = jnp.dot(jnp.ones((lead,), rows.dtype), rows,
                   precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)
  return g, d_bias.reshape(g.shape[-3:])


add_position_bias.defvjp(_add_position_bias_fwd, _add_position_bias_bwd)


def attend(q: Array, k: Array, v: Array, scale: Array, bias: Array,
           mask: Array | None, dtype, impl: str = DEFAULT_IMPL) -> Array:
  """Scaled cosine attention of every window.

  Args:
    q, k, v: (batch, windows, heads, N, head_dim).
    scale: (heads,) multiplier of the cosine scores (the clamped exp(logit)).
    bias: (heads, N, N) position bias.
    mask: additive (windows, N, N) shift/padding mask, or None.
    dtype: the compute dtype of the two einsums' inputs.
    impl: one of IMPLS.

  Returns:
    (batch, windows, heads, N, head_dim) in ``v``'s dtype.
  """
  if impl not in IMPLS:
    raise ValueError(f"model.attention_impl: {impl!r} is not one of {IMPLS}")
  q = cosine_normalize(q, jnp.float32)
  k = cosine_normalize(k, dtype)
  per_head = scale[:, None, None]
  if impl != "reference":
    q = q * per_head
  scores = jnp.einsum("bwhnd,bwhmd->bwhnm", q.astype(dtype), k,
                      preferred_element_type=jnp.float32)
  if impl == "reference":
    scores = scores * per_head
  scores = add_position_bias(scores, bias)
  if mask is not None:
    scores = scores + mask[:, None]
  if impl != "deferred":
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bwhnm,bwhmd->bwhnd", probs.astype(dtype), v)
  # Softmax is shift-invariant: the row max only keeps exp in range, so no
  # gradient flows through it.
  top = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
  weights = jnp.exp(scores - top)
  total = jnp.sum(weights, axis=-1, keepdims=True)          # (b, w, h, n, 1)
  out = jnp.einsum("bwhnm,bwhmd->bwhnd", weights.astype(dtype), v,
                   preferred_element_type=jnp.float32)
  return (out / total).astype(v.dtype)
