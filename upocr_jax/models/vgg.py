"""Frozen VGG16 features (after pool1, pool2, pool3) for the text-removal loss.

Same layers as torchvision's ``vgg16().features[:17]``; sees [0, 1] images with
no mean/std normalisation, as the official loss does. Its weights are not
trained: they are an ``nnx.Variable`` of type ``FrozenParam`` so that optimisers
built with ``wrt=nnx.Param`` never see them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from upocr_jax.models.layers import Conv2d, FrozenParam

Array = jax.Array

# (in, out) channels of the 3x3 convs; a 2x2 max pool closes each group.
VGG_GROUPS = ((( 3, 64), (64, 64)),
              ((64, 128), (128, 128)),
              ((128, 256), (256, 256), (256, 256)))


class VGG16Features(nnx.Module):
  """``features(x)`` returns the three pooled maps [pool1, pool2, pool3]."""

  def __init__(self, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.groups = nnx.List()
    for group in VGG_GROUPS:
      convs = nnx.List()
      for cin, cout in group:
        conv = Conv2d(cin, cout, 3, padding=1, rngs=rngs, dtype=dtype,
                      axes=(None, None))
        conv.kernel = FrozenParam(conv.kernel[...], logical_axes=(None,) * 4)
        conv.bias = FrozenParam(conv.bias[...], logical_axes=(None,))
        convs.append(conv)
      self.groups.append(convs)

  def __call__(self, x: Array) -> list[Array]:
    feats = []
    for convs in self.groups:
      for conv in convs:
        x = jax.nn.relu(conv(x))
      b, h, w, c = x.shape
      x = x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
      feats.append(x)
    return feats
