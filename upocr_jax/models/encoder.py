"""SwinV2 encoder: patch embedding, four stages, a LayerNorm-ed map per stage."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from upocr_jax.models.layers import Conv2d, LayerNorm, drop_path_schedule
from upocr_jax.models import attention
from upocr_jax.models.swinv2 import SwinStage

Array = jax.Array


class PatchEmbed(nnx.Module):
  """Conv(k=stride=patch) -> LayerNorm."""

  def __init__(self, patch: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.proj = Conv2d(3, dim, patch, stride=patch, rngs=rngs, dtype=dtype,
                       axes=(None, "embed"))
    self.norm = LayerNorm(dim, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    return self.norm(self.proj(x))


class SwinV2Encoder(nnx.Module):
  """Returns the maps at H/4, H/8, H/16, H/32 with embed_dim * 2^i channels."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, dtype=jnp.float32,
               residual_dtype=jnp.float32):
    """``cfg`` is ``config.model`` (see configs/upocr.py)."""
    e = cfg.encoder
    self.patch_embed = PatchEmbed(cfg.patch_size, e.embed_dim, rngs=rngs,
                                  dtype=dtype)
    dpr = drop_path_schedule(e.drop_path_rate, list(e.depths))
    n = len(e.depths)
    self.layers = nnx.List([
        SwinStage(e.embed_dim * 2**i, e.depths[i], e.num_heads[i],
                  e.window_size, e.pretrained_window_size, dpr[i],
                  cfg.mlp_ratio, cfg.mask_padding, cfg.remat,
                  "merge" if i < n - 1 else None, rngs=rngs, dtype=dtype,
                  scan=cfg.get("scan_blocks", False),
                  residual_dtype=residual_dtype,
                  remat_policy=cfg.get("remat_policy", "full"),
                  attention_impl=cfg.get("attention_impl", attention.DEFAULT_IMPL))
        for i in range(n)])
    self.norms = nnx.List([LayerNorm(e.embed_dim * 2**i, rngs=rngs)
                           for i in range(n)])

  def __call__(self, images: Array, key: Array | None = None,
               deterministic: bool = True) -> list[Array]:
    x = self.patch_embed(images)
    feats = []
    for i, (stage, norm) in enumerate(zip(self.layers, self.norms)):
      k = None if key is None else jax.random.fold_in(key, i)
      out, x = stage(x, k, deterministic)
      feats.append(norm(out))
    return feats
