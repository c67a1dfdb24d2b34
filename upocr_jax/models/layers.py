"""Small building blocks with explicit dtypes and logical axis names.

Flax's own layers shard variables eagerly when given axis names, which needs a mesh
even for a plain CPU forward pass. These layers instead record the names as
``logical_axes`` metadata on each ``nnx.Param``; ``upocr_jax.sharding`` turns them
into shardings with the rules of the config.

Parameters are always float32; ``dtype`` is the compute dtype of the matmul/conv.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array


def trunc_normal(std: float = 0.02):
  """timm's trunc_normal_: N(0, std) truncated at +-2 (absolute, not in stds)."""

  def init(key, shape, dtype=jnp.float32):
    lo, hi = -2.0 / std, 2.0 / std
    return std * jax.random.truncated_normal(key, lo, hi, shape, dtype)

  return init


def torch_default_uniform(fan_in: int):
  """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def zeros(key, shape, dtype=jnp.float32):
  del key
  return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
  del key
  return jnp.ones(shape, dtype)


class FrozenParam(nnx.Variable):
  """A weight that is loaded, never trained (optimisers built with
  ``wrt=nnx.Param`` never see it): the loss's VGG16, the FID Inception."""


def param(rngs: nnx.Rngs, init, shape: Sequence[int],
          axes: Sequence[str | None]) -> nnx.Param:
  """A float32 parameter with its logical axis names as metadata."""
  if len(axes) != len(shape):
    raise ValueError(f"logical axes {axes} do not match shape {shape}")
  return nnx.Param(init(rngs.params(), tuple(shape), jnp.float32),
                   logical_axes=tuple(axes))


class Dense(nnx.Module):
  """y = x @ kernel + bias, kernel (in, out) (PyTorch Linear weight transposed)."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               axes: tuple[str | None, str | None] = ("embed", "mlp"),
               use_bias: bool = True, dtype=jnp.float32, kernel_init=None,
               bias_init=zeros):
    self.dtype = dtype
    self.kernel = param(rngs, kernel_init or trunc_normal(0.02),
                        (in_features, out_features), axes)
    self.bias = (param(rngs, bias_init, (out_features,), (axes[1],))
                 if use_bias else None)

  def __call__(self, x: Array) -> Array:
    y = jnp.matmul(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32 (eps 1e-5 as PyTorch)."""

  def __init__(self, features: int, *, rngs: nnx.Rngs, axis_name: str = "norm",
               eps: float = 1e-5, scale_init=ones):
    self.eps = eps
    self.scale = param(rngs, scale_init, (features,), (axis_name,))
    self.bias = param(rngs, zeros, (features,), (axis_name,))

  def __call__(self, x: Array) -> Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    return y * self.scale[...] + self.bias[...]


class Conv2d(nnx.Module):
  """NHWC convolution, stride 1 or k, symmetric zero padding; kernel HWIO."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               rngs: nnx.Rngs, stride: int = 1, padding: int = 0,
               dtype=jnp.float32,
               axes: tuple[str | None, str | None] = ("conv_in", "conv_out")):
    fan_in = in_features * kernel_size * kernel_size
    self.dtype = dtype
    self.stride = stride
    self.padding = padding
    self.kernel = param(rngs, torch_default_uniform(fan_in),
                        (kernel_size, kernel_size, in_features, out_features),
                        (None, None) + tuple(axes))
    self.bias = param(rngs, torch_default_uniform(fan_in), (out_features,),
                      (axes[1],))

  def __call__(self, x: Array) -> Array:
    p = self.padding
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), self.kernel[...].astype(self.dtype),
        window_strides=(self.stride, self.stride), padding=((p, p), (p, p)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.bias[...].astype(self.dtype)


def drop_path_schedule(rate: float, depths: list[int]) -> list[list[float]]:
  """Stochastic depth rising linearly 0 -> rate over all blocks, per stage."""
  rates = np.linspace(0.0, rate, sum(depths), dtype=np.float32).tolist()
  out, start = [], 0
  for d in depths:
    out.append(rates[start:start + d])
    start += d
  return out


def drop_path(x: Array, rate: float, key: Array | None, deterministic: bool,
              keep_prob: Array | None = None) -> Array:
  """Stochastic depth: drops whole samples of a residual branch.

  ``keep_prob``, when given, replaces ``1 - rate`` (a traced value: scanned
  blocks get theirs as data, computed on the host as the loop computes it).
  """
  if deterministic or (keep_prob is None and rate == 0.0):
    return x
  if key is None:
    raise ValueError("drop_path needs a PRNG key when deterministic=False; "
                     "pass rng= to the model call")
  keep = 1.0 - rate if keep_prob is None else keep_prob
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  mask = jax.random.bernoulli(key, keep, shape)
  return jnp.where(mask, x / keep, jnp.zeros_like(x))


# Logical axes of the NHWC maps between stages (see upocr_jax.sharding.constrain;
# config.sharding.rules maps them). The decoder's high-resolution maps (H/4, H/2,
# H) name their spatial dims apart, so that a config can shard those alone.
MAP_AXES = ("act_batch", "act_height", "act_width", "act_embed")
HIRES_MAP_AXES = ("act_batch", "act_height_hires", "act_width_hires",
                  "act_embed")
# The heads' 3-channel outputs: the channel dim stays whole.
HIRES_IMAGE_AXES = HIRES_MAP_AXES[:3] + (None,)
