"""Swin Transformer V2 pieces shared by the UPOCR encoder and decoder.

Tensors are NHWC. Behaviour follows the official UPOCR code (which the fixtures
pin down): scaled cosine attention with a clamped per-head logit scale, a
continuous position bias MLP over log-spaced coordinates, q/v bias only,
residual post-norm, zero padding of the map to a multiple of the window on the
bottom/right with the padded tokens left unmasked (unless ``mask_padding``), and
a shift of window//2 on every second block even when the map is smaller than
the window.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from upocr_jax import sharding
from upocr_jax.models.attention import DEFAULT_IMPL, attend
from upocr_jax.models.layers import (MAP_AXES, Dense, LayerNorm, drop_path,
                                     param, zeros)

Array = jax.Array
# float32 log(100), the clamp of the official code (torch.log(tensor(1/0.01))).
_LOGIT_CLAMP = float(np.log(np.float32(100.0)).astype(np.float32))
_SHIFT_MASK_VALUE = -100.0  # the official shifted-window mask value
_PAD_MASK_VALUE = -1e9      # for mask_padding=True: removes padded keys entirely


# ----------------------------------------------------------------------------
# Static (numpy) geometry: computed at trace time from shapes, never learned.
# ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def relative_coords_table(window: int, pretrained_window: int) -> np.ndarray:
  """(2w-1, 2w-1, 2) log-spaced relative coordinates fed to the bias MLP."""
  r = np.arange(-(window - 1), window, dtype=np.float32)
  table = np.stack(np.meshgrid(r, r, indexing="ij"), axis=-1)
  denom = (pretrained_window if pretrained_window > 0 else window) - 1
  table = table / np.float32(denom) * np.float32(8.0)
  table = (np.sign(table) * np.log2(np.abs(table) + 1.0) /
           np.float32(np.log2(8.0)))
  return table.astype(np.float32)


@functools.lru_cache(maxsize=None)
def relative_position_index(window: int) -> np.ndarray:
  """(N, N) index into the flattened (2w-1)^2 bias table, N = window^2."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window),
                                indexing="ij")).reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
  return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


def _partition_np(x: np.ndarray, window: int) -> np.ndarray:
  """(Hp, Wp) -> (nW, window*window), windows in row-major order."""
  hp, wp = x.shape
  x = x.reshape(hp // window, window, wp // window, window).transpose(0, 2, 1, 3)
  return x.reshape(-1, window * window)


@functools.lru_cache(maxsize=None)
def attention_mask(h: int, w: int, window: int, shift: int,
                   mask_padding: bool) -> np.ndarray | None:
  """Additive (nW, N, N) mask for a block on an h x w map, or None.

  Shifted blocks get the official -100 mask between regions that the cyclic
  shift brought together. With ``mask_padding`` the zero-padded tokens are also
  removed as keys. The dense numpy form of :func:`attention_mask_parts`, for
  inspection; the model expands the compact form in the program.
  """
  regions, valid = attention_mask_parts(h, w, window, shift, mask_padding)
  mask = None
  if regions is not None:
    mask = np.where(regions[:, None, :] != regions[:, :, None],
                    _SHIFT_MASK_VALUE, 0.0).astype(np.float32)
  if valid is not None:
    pad = np.where(valid[:, None, :], 0.0, _PAD_MASK_VALUE).astype(np.float32)
    mask = pad if mask is None else mask + pad
    mask = np.broadcast_to(mask, (valid.shape[0],) + (valid.shape[1],) * 2)
  return None if mask is None else np.ascontiguousarray(mask)


@functools.lru_cache(maxsize=None)
def attention_mask_parts(h: int, w: int, window: int, shift: int,
                         mask_padding: bool
                         ) -> tuple[np.ndarray | None, np.ndarray | None]:
  """The compact form of :func:`attention_mask`: (regions, key_valid).

  ``regions`` (nW, N) int32: the shift region of every token (None when not
  shifted); ``key_valid`` (nW, N) bool: False on zero-padded keys (None unless
  ``mask_padding`` and the map is padded). :func:`additive_mask` expands them
  inside the compiled program, where XLA fuses the expansion into the score
  computation: a dense (nW, N, N) constant would be 67 MB for an 8x8 window
  on a 512x512 map, read from memory by every shifted block and slow to
  compile.
  """
  hp, wp = -(-h // window) * window, -(-w // window) * window
  regions = valid = None
  if shift > 0:
    grid = np.zeros((hp, wp), np.int32)
    bounds = ((0, hp - window), (hp - window, hp - shift), (hp - shift, hp))
    wbounds = ((0, wp - window), (wp - window, wp - shift), (wp - shift, wp))
    cnt = 0
    for h0, h1 in bounds:
      for w0, w1 in wbounds:
        grid[h0:h1, w0:w1] = cnt
        cnt += 1
    regions = np.ascontiguousarray(_partition_np(grid, window))
  if mask_padding and (hp != h or wp != w):
    keep = np.zeros((hp, wp), bool)
    keep[:h, :w] = True
    keep = np.roll(keep, (-shift, -shift), axis=(0, 1))
    valid = np.ascontiguousarray(_partition_np(keep, window))
  return regions, valid


def additive_mask(parts: tuple[np.ndarray | None, np.ndarray | None]
                  ) -> Array | None:
  """(nW, N, N) additive mask from :func:`attention_mask_parts` (or None)."""
  regions, valid = parts
  mask = None
  if regions is not None:
    r = jnp.asarray(regions)
    mask = jnp.where(r[:, :, None] != r[:, None, :],
                     jnp.float32(_SHIFT_MASK_VALUE), jnp.float32(0.0))
  if valid is not None:
    pad = jnp.where(jnp.asarray(valid)[:, None, :], jnp.float32(0.0),
                    jnp.float32(_PAD_MASK_VALUE))
    mask = (jnp.broadcast_to(pad, pad.shape[:1] + (pad.shape[2],) * 2)
            if mask is None else mask + pad)
  return mask


def window_partition(x: Array, window: int) -> Array:
  """(B, Hp, Wp, C) -> (B, nW, window*window, C)."""
  b, hp, wp, c = x.shape
  x = x.reshape(b, hp // window, window, wp // window, window, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, -1, window * window, c)


def window_reverse(x: Array, window: int, hp: int, wp: int) -> Array:
  """(B, nW, window*window, C) -> (B, Hp, Wp, C)."""
  b, _, _, c = x.shape
  x = x.reshape(b, hp // window, wp // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)


# ----------------------------------------------------------------------------
# Modules
# ----------------------------------------------------------------------------
class WindowAttention(nnx.Module):
  """Scaled cosine window attention with continuous position bias."""

  def __init__(self, dim: int, num_heads: int, window: int,
               pretrained_window: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
               impl: str = DEFAULT_IMPL):
    self.num_heads = num_heads
    self.impl = impl  # models/attention.py
    self.window = window
    self.pretrained_window = pretrained_window
    self.dtype = dtype
    self.qkv = Dense(dim, 3 * dim, rngs=rngs, axes=("embed", "heads"),
                     use_bias=False, dtype=dtype)
    self.q_bias = param(rngs, zeros, (dim,), ("heads",))
    self.v_bias = param(rngs, zeros, (dim,), ("heads",))
    self.logit_scale = param(
        rngs, lambda k, s, d: jnp.full(s, math.log(10.0), d), (num_heads,),
        ("heads_only",))
    # The position-bias MLP is tiny and stays float32 for accuracy.
    self.cpb_fc1 = Dense(2, 512, rngs=rngs, axes=(None, "cpb"))
    self.cpb_fc2 = Dense(512, num_heads, rngs=rngs, axes=("cpb", "heads_only"),
                         use_bias=False)
    self.proj = Dense(dim, dim, rngs=rngs, axes=("heads", "embed"), dtype=dtype)

  def position_bias(self) -> Array:
    """(heads, N, N) bias 16*sigmoid(MLP(coords)) gathered per token pair."""
    table = jnp.asarray(relative_coords_table(self.window,
                                              self.pretrained_window))
    bias = self.cpb_fc2(jax.nn.relu(self.cpb_fc1(table)))
    bias = bias.reshape(-1, self.num_heads)
    idx = relative_position_index(self.window).reshape(-1)
    n = self.window * self.window
    bias = bias[idx].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    return 16.0 * jax.nn.sigmoid(bias)

  def __call__(self, x: Array, mask: Array | np.ndarray | None) -> Array:
    """x: (B, nW, N, C); mask: additive (nW, N, N) or None."""
    b, nw, n, c = x.shape
    h = self.num_heads
    zero_k = jnp.zeros_like(self.q_bias[...])
    qkv_bias = jnp.concatenate([self.q_bias[...], zero_k, self.v_bias[...]])
    # Named scopes label the profile and FLOP counts (benchmarks/).
    with jax.named_scope("attn_linear"):
      qkv = self.qkv(x) + qkv_bias.astype(self.dtype)
    # Head-major (B, nW, heads, N, head_dim): one transpose each here instead
    # of one around each einsum (models/attention.py). A split, not indexing
    # of a stacked (3, ...) array: its gradient is one concatenation, where
    # indexing's was three zero-padded full copies added together.
    q, k, v = (t.reshape(b, nw, n, h, c // h).transpose(0, 1, 3, 2, 4)
               for t in jnp.split(qkv, 3, axis=-1))

    bias = self.position_bias()
    scale = jnp.exp(jnp.minimum(self.logit_scale[...], _LOGIT_CLAMP))
    with jax.named_scope("attn_scores"):
      out = attend(q, k, v, scale, bias,
                   None if mask is None else jnp.asarray(mask), self.dtype,
                   self.impl)
    with jax.named_scope("attn_linear"):
      return self.proj(out.transpose(0, 1, 3, 2, 4).reshape(b, nw, n, c))


class Mlp(nnx.Module):
  """fc1 -> exact GELU -> fc2."""

  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.fc1 = Dense(dim, hidden, rngs=rngs, axes=("embed", "mlp"), dtype=dtype)
    self.fc2 = Dense(hidden, dim, rngs=rngs, axes=("mlp", "embed"), dtype=dtype)

  def __call__(self, x: Array) -> Array:
    with jax.named_scope("mlp"):
      return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class SwinBlock(nnx.Module):
  """Residual post-norm SwinV2 block on an NHWC map."""

  def __init__(self, dim: int, num_heads: int, window: int,
               pretrained_window: int, shift: int, drop_path_rate: float,
               mlp_ratio: float, mask_padding: bool, *, rngs: nnx.Rngs,
               dtype=jnp.float32, residual_dtype=jnp.float32,
               attention_impl: str = DEFAULT_IMPL):
    self.window = window
    self.shift = shift
    # The residual stream's dtype (models/precision.py): also the carry of a
    # scanned stage, which must keep one dtype.
    self.residual_dtype = residual_dtype
    self.drop_path_rate = drop_path_rate
    self.mask_padding = mask_padding
    self.attn = WindowAttention(dim, num_heads, window, pretrained_window,
                                rngs=rngs, dtype=dtype, impl=attention_impl)
    # Post-norms start at zero so that every block starts as the identity.
    self.norm1 = LayerNorm(dim, rngs=rngs, scale_init=zeros)
    self.mlp = Mlp(dim, int(dim * mlp_ratio), rngs=rngs, dtype=dtype)
    self.norm2 = LayerNorm(dim, rngs=rngs, scale_init=zeros)

  def __call__(self, x: Array, key: Array | None = None,
               deterministic: bool = True,
               keep_prob: Array | None = None,
               shifted: Array | None = None) -> Array:
    """``keep_prob`` overrides 1 - drop_path_rate and ``shifted`` (a traced
    bool: shift by window//2 or not) overrides the static shift: together they
    let one compiled block body serve every block of a scanned stage."""
    rate = self.drop_path_rate
    x = x.astype(self.residual_dtype)
    b, h, w, c = x.shape
    ws = self.window
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    y = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
    if shifted is None:
      s = self.shift
      roll = (lambda t, d: jnp.roll(t, (d * s, d * s), axis=(1, 2))
              if s else t)
      mask = additive_mask(attention_mask_parts(h, w, ws, s,
                                                self.mask_padding))
    else:
      s = ws // 2
      # Both variants are cheap next to the attention they feed; a select
      # (not lax.cond) keeps them fusible into the window partition and the
      # score computation.
      roll = lambda t, d: jnp.where(  # noqa: E731
          shifted, jnp.roll(t, (d * s, d * s), axis=(1, 2)), t)
      mask = _select_mask(
          shifted,
          additive_mask(attention_mask_parts(h, w, ws, s, self.mask_padding)),
          additive_mask(attention_mask_parts(h, w, ws, 0, self.mask_padding)))
    y = roll(y, -1)
    y = self.attn(window_partition(y, ws), mask)
    y = window_reverse(y, ws, hp, wp)
    y = roll(y, 1)[:, :h, :w]
    k1 = k2 = None
    if key is not None:
      k1, k2 = jax.random.split(key)
    # The branches end in a float32 LayerNorm (and a traced keep probability
    # is float32): cast back so that the block keeps the residual dtype.
    x = x + drop_path(self.norm1(y), rate, k1, deterministic,
                      keep_prob).astype(x.dtype)
    return x + drop_path(self.norm2(self.mlp(x)), rate, k2, deterministic,
                         keep_prob).astype(x.dtype)


def _select_mask(pred: Array, on: Array | None, off: Array | None
                 ) -> Array | None:
  """``on`` where the traced ``pred`` holds, else ``off`` (None: no mask)."""
  if on is None and off is None:
    return None
  on = jnp.float32(0.0) if on is None else on
  off = jnp.float32(0.0) if off is None else off
  return jnp.where(pred, on, off)


class PatchMerging(nnx.Module):
  """2x2 neighbours (0,0),(1,0),(0,1),(1,1) -> Linear(4C, 2C) -> LayerNorm."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.reduction = Dense(4 * dim, 2 * dim, rngs=rngs,
                           axes=("embed", "embed_out"),
                           use_bias=False, dtype=dtype)
    self.norm = LayerNorm(2 * dim, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2],
                         x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    return self.norm(self.reduction(x))


class PatchSplit(nnx.Module):
  """Inverse of patch merging: C -> 4 chunks of C/4 placed on a 2x2 grid.

  Chunk k goes to offset (row, col) = (0,0), (1,0), (0,1), (1,1), i.e.
  k = row + 2*col; then Linear(C/4, C/2) and LayerNorm(C/2).
  """

  def __init__(self, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.upsample = Dense(dim // 4, dim // 2, rngs=rngs,
                          axes=("embed", "embed_out"),
                          use_bias=False, dtype=dtype)
    self.norm = LayerNorm(dim // 2, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, 2, 2, c // 4)       # (..., col, row, C/4)
    x = x.transpose(0, 1, 4, 2, 3, 5)          # (b, h, row, w, col, C/4)
    x = x.reshape(b, 2 * h, 2 * w, c // 4)
    return self.norm(self.upsample(x))


# What a rematerialised block keeps for the backward pass (config.model.
# remat_policy): "full" keeps only the block's input and recomputes the rest;
# "dots" also keeps the outputs of its linears and convs (matmuls without
# batch dimensions) and recomputes the element-wise work and the attention
# scores (batched matmuls), which are cheap to redo and large to keep.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class SwinStage(nnx.Module):
  """A stack of blocks (shift on every second one) plus optional resampling.

  ``act_axes`` / ``out_act_axes``: logical axes of the blocks' map and of the
  resampled map (``sharding.constrain``; the decoder's high-resolution maps
  name theirs apart).
  """

  def __init__(self, dim: int, depth: int, num_heads: int, window: int,
               pretrained_window: int, drop_path_rates: list[float],
               mlp_ratio: float, mask_padding: bool, remat: bool,
               resample: str | None, *, rngs: nnx.Rngs, dtype=jnp.float32,
               scan: bool = False,
               act_axes: tuple[str | None, ...] = MAP_AXES,
               out_act_axes: tuple[str | None, ...] = MAP_AXES,
               residual_dtype=jnp.float32, remat_policy: str = "full",
               attention_impl: str = DEFAULT_IMPL):
    if remat_policy not in REMAT_POLICIES:
      raise ValueError(f"model.remat_policy: {remat_policy!r} is not one of "
                       f"{sorted(REMAT_POLICIES)}")
    self.remat = remat
    self.remat_policy = remat_policy
    self.scan = scan
    self.act_axes, self.out_act_axes = act_axes, out_act_axes
    self.blocks = nnx.List([
        SwinBlock(dim, num_heads, window, pretrained_window,
                  0 if i % 2 == 0 else window // 2, drop_path_rates[i],
                  mlp_ratio, mask_padding, rngs=rngs, dtype=dtype,
                  residual_dtype=residual_dtype, attention_impl=attention_impl)
        for i in range(depth)])
    self.downsample = (PatchMerging(dim, rngs=rngs, dtype=dtype)
                       if resample == "merge" else None)
    self.upsample = (PatchSplit(dim, rngs=rngs, dtype=dtype)
                     if resample == "split" else None)

  def __call__(self, x: Array, key: Array | None = None,
               deterministic: bool = True) -> tuple[Array, Array]:
    """Returns (blocks output, resampled output)."""
    x = sharding.constrain(x, self.act_axes)
    if self.scan and len(self.blocks) >= 2:
      x = self._scanned(x, key, deterministic)
    else:
      run = lambda block, x, k: block(x, k, deterministic)  # noqa: E731
      if self.remat:
        run = nnx.remat(run, policy=REMAT_POLICIES[self.remat_policy])
      for i, block in enumerate(self.blocks):
        x = run(block, x, None if key is None else jax.random.fold_in(key, i))
    x = sharding.constrain(x, self.act_axes)
    if self.downsample is not None:
      return x, sharding.constrain(self.downsample(x), self.out_act_axes)
    if self.upsample is not None:
      return x, sharding.constrain(self.upsample(x), self.out_act_axes)
    return x, x

  def _scanned(self, x: Array, key: Array | None,
               deterministic: bool) -> Array:
    """The blocks as one ``lax.scan``: XLA compiles a single block body.

    Blocks differ only in data: their parameters, drop-path rate and whether
    they shift (passed as a traced flag), so the paper's 18-block stages and
    its 2-block stages alike compile one block each. The parameters stay one
    module per block (checkpoints and official weights are unchanged); they
    are stacked here, and gradients flow back through the stacking. Same keys
    and rates per block as the loop, so the result is the same.
    """
    blocks = list(self.blocks)
    # One graph runs every block: its static shift and rate are overridden by
    # the traced flag and keep probability.
    gd = nnx.graphdef(blocks[0])
    states = jax.tree.map(lambda *a: jnp.stack(a),
                          *[nnx.state(b) for b in blocks])
    # 1 - rate in float64 then float32, exactly as the loop's Python floats.
    keeps = jnp.asarray(np.float32([1.0 - b.drop_path_rate for b in blocks]))
    idx = jnp.arange(len(blocks), dtype=jnp.uint32)
    shifts = jnp.asarray([b.shift > 0 for b in blocks])

    def body(x, xs):
      st, keep, i, shifted = xs
      k = None if key is None else jax.random.fold_in(key, i)
      return nnx.merge(gd, st)(x, k, deterministic, keep, shifted), None

    if self.remat:  # see REMAT_POLICIES
      body = jax.checkpoint(body, policy=REMAT_POLICIES[self.remat_policy])
    # The carry enters in the dtype that every block returns.
    x = x.astype(blocks[0].residual_dtype)
    x, _ = jax.lax.scan(body, x, (states, keeps, idx, shifts))
    return x
