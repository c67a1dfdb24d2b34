"""The folded and deferred attention against the textbook formulation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upocr_jax.models import attention
from upocr_jax.models.swinv2 import additive_mask, attention_mask_parts


def _inputs(dtype=jnp.float32, heads=3, window=4, windows=4, d=8):
  n = window * window
  ks = jax.random.split(jax.random.key(0), 5)
  q, k, v = (jax.random.normal(kk, (2, windows, heads, n, d), dtype)
             for kk in ks[:3])
  k = k.at[:, :, :, -3:].set(0)  # zero keys, as zero-padded tokens have
  scale = jnp.exp(jax.random.uniform(ks[3], (heads,), maxval=np.log(100.0)))
  bias = 16 * jax.nn.sigmoid(jax.random.normal(ks[4], (heads, n, n)))
  mask = jnp.asarray(additive_mask(attention_mask_parts(8, 8, window, 2, True)))
  return q, k, v, scale, bias, mask


@pytest.mark.parametrize("impl", ["folded", "deferred"])
@pytest.mark.parametrize("masked", [True, False])
def test_matches_reference_values_and_gradients(masked, impl):
  q, k, v, scale, bias, mask = _inputs()
  mask = mask if masked else None

  def run(impl):
    f = lambda q, k, v, s: jnp.sum(jnp.sin(
        attention.attend(q, k, v, s, bias, mask, jnp.float32, impl)))
    return (attention.attend(q, k, v, scale, bias, mask, jnp.float32, impl),
            jax.grad(f, argnums=(0, 1, 2, 3))(q, k, v, scale))

  (ref, ref_g), (new, new_g) = run("reference"), run(impl)
  # Scores reach ~100 (scale up to 100): float32 rounding of the
  # reassociated products leaves a few 1e-6 in the O(1) outputs.
  np.testing.assert_allclose(new, ref, rtol=2e-5, atol=1e-5)
  for a, b in zip(new_g, ref_g):
    np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  assert all(np.isfinite(np.asarray(g)).all() for g in new_g)


def test_bfloat16_inputs_keep_their_dtype_and_stay_close():
  q, k, v, scale, bias, mask = _inputs()
  ref = attention.attend(q, k, v, scale, bias, mask, jnp.float32, "reference")
  out = attention.attend(q.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                         v.astype(jnp.bfloat16), scale, bias, mask,
                         jnp.bfloat16, "deferred")
  assert out.dtype == jnp.bfloat16
  err = float(jnp.mean(jnp.abs(out.astype(jnp.float32) - ref)))
  assert err < 0.02 * float(jnp.mean(jnp.abs(ref))), err


def test_unknown_impl_names_the_field():
  q, k, v, scale, bias, mask = _inputs()
  with pytest.raises(ValueError, match="model.attention_impl"):
    attention.attend(q, k, v, scale, bias, mask, jnp.float32, "flash")


def test_position_bias_gradient_is_the_sum_over_batch_and_windows():
  ks = jax.random.split(jax.random.key(1), 3)
  scores = jax.random.normal(ks[0], (2, 5, 3, 16, 16))
  bias = jax.random.normal(ks[1], (3, 16, 16))
  weight = jax.random.normal(ks[2], scores.shape)

  def loss(add):
    return lambda s, b: jnp.sum(jnp.tanh(add(s, b)) * weight)

  got = jax.grad(loss(attention.add_position_bias), argnums=(0, 1))(scores,
                                                                    bias)
  want = jax.grad(loss(lambda s, b: s + b), argnums=(0, 1))(scores, bias)
  np.testing.assert_allclose(attention.add_position_bias(scores, bias),
                             scores + bias)
  for a, b in zip(got, want):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
