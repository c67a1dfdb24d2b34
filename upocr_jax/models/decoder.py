"""SwinV2 decoder: stages with patch split, lateral connections, three heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from upocr_jax import sharding
from upocr_jax.models.layers import (HIRES_IMAGE_AXES, HIRES_MAP_AXES,
                                     MAP_AXES, Conv2d, LayerNorm,
                                     drop_path_schedule)
from upocr_jax.models import attention
from upocr_jax.models.swinv2 import SwinStage

Array = jax.Array

# Decoder stages after which an encoder map is added (the first three) and after
# which an output head reads the map (the last three: H/4, H/2, H).
NUM_LATERALS = 3
NUM_HEADS_OUT = 3


def lateral_connection(d: int, *, rngs: nnx.Rngs, dtype) -> nnx.List:
  """Conv1x1(d,d) -> Conv3x3(d,2d) -> Conv3x3(2d,2d) -> Conv1x1(2d,d), linear."""
  return nnx.List([
      Conv2d(d, d, 1, rngs=rngs, dtype=dtype),
      Conv2d(d, 2 * d, 3, padding=1, rngs=rngs, dtype=dtype),
      Conv2d(2 * d, 2 * d, 3, padding=1, rngs=rngs, dtype=dtype),
      Conv2d(2 * d, d, 1, rngs=rngs, dtype=dtype),
  ])


class SwinV2Decoder(nnx.Module):
  """Maps the prompted H/32 map back to full resolution.

  Stage i runs its blocks at dim D/2^i (D = 8 x encoder embed) and ends with a
  patch split to D/2^(i+1) at twice the resolution. The maps the heads read
  (H/4, H/2, H) and everything after them are ``HIRES_MAP_AXES``.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32,
               residual_dtype=jnp.float32):
    d = cfg.decoder
    embed = 8 * cfg.encoder.embed_dim
    n = len(d.depths)
    dpr = drop_path_schedule(d.drop_path_rate, list(d.depths))
    # Stage i's split output is at H/2^(4-i): high resolution from the first
    # head's stage on; its blocks from the stage after.
    first_out = n - NUM_HEADS_OUT
    axes = lambda hires: HIRES_MAP_AXES if hires else MAP_AXES  # noqa: E731
    self.layers = nnx.List([
        SwinStage(embed // 2**i, d.depths[i], d.num_heads[i], d.window_size,
                  d.pretrained_window_size, dpr[i], cfg.mlp_ratio,
                  cfg.mask_padding, cfg.remat, "split", rngs=rngs, dtype=dtype,
                  scan=cfg.get("scan_blocks", False),
                  act_axes=axes(i > first_out),
                  out_act_axes=axes(i >= first_out),
                  residual_dtype=residual_dtype,
                  remat_policy=cfg.get("remat_policy", "full"),
                  attention_impl=cfg.get("attention_impl", attention.DEFAULT_IMPL))
        for i in range(n)])
    out_dims = [embed // 2**(i + 1) for i in range(n)]
    self.lateral_connection_list = nnx.List([
        lateral_connection(out_dims[i], rngs=rngs, dtype=dtype)
        for i in range(NUM_LATERALS)])
    self.out_norms = nnx.List([LayerNorm(out_dims[i], rngs=rngs)
                               for i in range(n - NUM_HEADS_OUT, n)])
    self.intermediate_convs = nnx.List([
        Conv2d(out_dims[i], 3, 3, padding=1, rngs=rngs, dtype=dtype,
               axes=("conv_in", None))
        for i in range(n - NUM_HEADS_OUT, n - 1)])
    self.output_conv = Conv2d(out_dims[-1], 3, 3, padding=1, rngs=rngs,
                              dtype=dtype, axes=("conv_in", None))

  def __call__(self, x: Array, enc_feats: list[Array], key: Array | None = None,
               deterministic: bool = True,
               intermediates: dict | None = None) -> tuple[Array, ...]:
    n = len(self.layers)
    first_out = n - NUM_HEADS_OUT
    heads = list(self.intermediate_convs) + [self.output_conv]
    outputs = []
    for i, stage in enumerate(self.layers):
      k = None if key is None else jax.random.fold_in(key, i)
      _, x = stage(x, k, deterministic)
      if intermediates is not None:
        intermediates[f"dec_layer{i}_up"] = x
      hires = i >= first_out
      if i < NUM_LATERALS:
        skip = enc_feats[-i - 2]
        for conv in self.lateral_connection_list[i]:
          # Pinned like the stages' maps (see sharding.constrain): the
          # kernel gradients of these convs were wrong on (2,2,2) meshes.
          skip = sharding.constrain(
              conv(skip), HIRES_MAP_AXES if hires else MAP_AXES)
        x = x + skip
      if hires:
        y = self.out_norms[i - first_out](x)
        outputs.append(sharding.constrain(
            heads[i - first_out](y), HIRES_IMAGE_AXES).astype(jnp.float32))
    return tuple(outputs)
