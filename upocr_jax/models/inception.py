"""The FID Inception-v3 (pytorch-fid's network) up to its 2048-d pool3 features.

The architecture of pytorch-fid's ``fid_inception_v3`` (the TensorFlow
"2015-12-05" Inception ported to PyTorch, weights
``pt_inception-2015-12-05-6726825d.pth``): torchvision's Inception-v3 whose
Mixed_5b..5d, 6b..6e, 7b and 7c blocks average-pool without counting the padding
(as TensorFlow does) and whose last block (Mixed_7c) max-pools in its pool branch.
Only the layers before the final average pool are built; the 1008-way classifier
is not needed for FID.

Every convolution is conv (no bias) + BatchNorm in eval mode (eps 0.001) + ReLU.
Attribute names are the PyTorch module names, so a parameter's state-dict key is
its path (``Mixed_5b.branch1x1.conv.weight``, ``...bn.running_var``); see
``upocr_jax.weights.inception_weights.load_inception``. The weights are
``FrozenParam``: never trained. Layout NHWC, kernels HWIO, float32 at full
precision (the features feed a metric, so accelerators must not drop to TF32 /
bf16 passes).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from upocr_jax.models.layers import FrozenParam

Array = jax.Array

BN_EPS = 0.001
FEATURE_DIM = 2048
# Smallest input side the network accepts: Mixed_7a's stride-2 3x3 conv needs a
# 3x3 map. (pytorch-fid resizes every image to 299 first anyway.)
MIN_INPUT_SIZE = 75


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _frozen(value: Array) -> FrozenParam:
  return FrozenParam(value, logical_axes=(None,) * value.ndim)


class BatchNorm(nnx.Module):
  """Eval-mode BatchNorm2d with PyTorch's parameter names."""

  def __init__(self, features: int):
    self.weight = _frozen(jnp.ones((features,), jnp.float32))
    self.bias = _frozen(jnp.zeros((features,), jnp.float32))
    self.running_mean = _frozen(jnp.zeros((features,), jnp.float32))
    self.running_var = _frozen(jnp.ones((features,), jnp.float32))

  def __call__(self, x: Array) -> Array:
    # The same affine form as PyTorch's CPU inference kernel: x * a + b.
    scale = self.weight[...] * jax.lax.rsqrt(self.running_var[...] + BN_EPS)
    return x * scale + (self.bias[...] - self.running_mean[...] * scale)


class Conv(nnx.Module):
  """Bias-free NHWC convolution; ``kernel`` is HWIO (PyTorch ``weight`` OIHW)."""

  def __init__(self, in_features: int, out_features: int,
               kernel_size: int | Sequence[int], *, rngs: nnx.Rngs,
               stride: int = 1, padding: int | Sequence[int] = 0):
    kh, kw = _pair(kernel_size)
    self.stride = stride
    self.padding = _pair(padding)
    # Torchvision's init (truncated normal, std 0.1); loaded weights replace it.
    init = 0.1 * jax.random.truncated_normal(
        rngs.params(), -2.0, 2.0, (kh, kw, in_features, out_features))
    self.kernel = _frozen(init)

  def __call__(self, x: Array) -> Array:
    ph, pw = self.padding
    return jax.lax.conv_general_dilated(
        x, self.kernel[...], window_strides=(self.stride, self.stride),
        padding=((ph, ph), (pw, pw)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST)


class BasicConv2d(nnx.Module):
  """conv -> BatchNorm (eval) -> ReLU, torchvision's ``BasicConv2d``."""

  def __init__(self, in_features: int, out_features: int,
               kernel_size: int | Sequence[int], *, rngs: nnx.Rngs,
               stride: int = 1, padding: int | Sequence[int] = 0):
    self.conv = Conv(in_features, out_features, kernel_size, rngs=rngs,
                     stride=stride, padding=padding)
    self.bn = BatchNorm(out_features)

  def __call__(self, x: Array) -> Array:
    return jax.nn.relu(self.bn(self.conv(x)))


def max_pool(x: Array, stride: int, padding: int = 0) -> Array:
  """3x3 max pool; padding counts as -inf (PyTorch's ``max_pool2d``)."""
  return jax.lax.reduce_window(
      x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1),
      ((0, 0), (padding, padding), (padding, padding), (0, 0)))


def avg_pool_exclude_pad(x: Array) -> Array:
  """3x3 stride-1 'same' average that ignores the zero padding.

  PyTorch's ``avg_pool2d(..., padding=1, count_include_pad=False)``, i.e.
  TensorFlow's average pool, which the FID weights were trained with.
  """
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  window, strides = (1, 3, 3, 1), (1, 1, 1, 1)
  total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype)
  count = jax.lax.reduce_window(ones, 0.0, jax.lax.add, window, strides, pad)
  return total / count


class InceptionA(nnx.Module):
  """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and pool branches."""

  def __init__(self, cin: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(avg_pool_exclude_pad(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a: the 35 -> 17 reduction."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, max_pool(x, 2)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b..6e: factorised 7x7 branches."""

  def __init__(self, cin: int, c7: int, *, rngs: nnx.Rngs):
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for conv in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                 self.branch7x7dbl_4, self.branch7x7dbl_5):
      d = conv(d)
    bp = self.branch_pool(avg_pool_exclude_pad(x))
    return jnp.concatenate([self.branch1x1(x), b7, d, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a: the 17 -> 8 reduction."""

  def __init__(self, cin: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = x
    for conv in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3,
                 self.branch7x7x3_4):
      b7 = conv(b7)
    return jnp.concatenate([b3, b7, max_pool(x, 2)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b / 7c: expanded 3x3 branches.

  ``max_pool_branch``: the FID network's Mixed_7c max-pools in its pool branch
  (a quirk of the TensorFlow graph that the weights depend on); 7b averages
  without the padding.
  """

  def __init__(self, cin: int, *, max_pool_branch: bool, rngs: nnx.Rngs):
    self.max_pool_branch = max_pool_branch
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1),
                                       rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0),
                                       rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = (max_pool(x, 1, padding=1) if self.max_pool_branch
              else avg_pool_exclude_pad(x))
    return jnp.concatenate([
        self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
        self.branch_pool(pooled)], axis=-1)


class FIDInceptionV3(nnx.Module):
  """pytorch-fid's Inception-v3 feature network (its output block 3).

  ``model(x)``: ``x`` NHWC float32, already scaled to [-1, 1] (and, to match
  pytorch-fid, resized to 299x299: see ``upocr_jax.evaluation.fid``), any size >= 75.
  Returns the (N, 2048) features after the global average pool ("pool3").

  Build it with ``upocr_jax.weights.inception_weights.load_inception``
  (abstract init, then the weights): the eager random init alone takes ~30 s on a small CPU.
  """

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, max_pool_branch=False, rngs=rngs)
    self.Mixed_7c = InceptionE(2048, max_pool_branch=True, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"expected NHWC RGB input, got shape {x.shape}")
    if min(x.shape[1:3]) < MIN_INPUT_SIZE:
      raise ValueError(f"input {x.shape[1]}x{x.shape[2]} is smaller than "
                       f"{MIN_INPUT_SIZE}x{MIN_INPUT_SIZE}")
    x = x.astype(jnp.float32)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = max_pool(x, 2)
    x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 2)
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a,
                  self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                  self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)
    return jnp.mean(x, axis=(1, 2))
