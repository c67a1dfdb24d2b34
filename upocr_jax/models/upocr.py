"""UPOCR: SwinV2 encoder -> proj -> + task prompt -> SwinV2 decoder -> 3 heads."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from upocr_jax.models.attention import DEFAULT_IMPL as ATTENTION_DEFAULT
from upocr_jax.models.attention import IMPLS as ATTENTION_IMPLS
from upocr_jax.models.decoder import SwinV2Decoder
from upocr_jax.models.encoder import SwinV2Encoder
from upocr_jax.models.layers import Dense, param
from upocr_jax.models.precision import DTYPES, Policy
from upocr_jax.models.swinv2 import REMAT_POLICIES

Array = jax.Array


class ConfigError(ValueError):
  """A configuration field has an invalid value; the message names the field."""


def _fail(field: str, msg: str):
  raise ConfigError(f"config.model.{field}: {msg}")


def validate_model_config(cfg: ml_collections.ConfigDict) -> None:
  """Checks ``config.model`` and raises ConfigError naming the bad field."""
  e, d = cfg.encoder, cfg.decoder
  if len(cfg.tasks) < 1 or len(set(cfg.tasks)) != len(cfg.tasks):
    _fail("tasks", f"must be a non-empty list of distinct names, got {cfg.tasks}")
  if cfg.dtype not in DTYPES:
    _fail("dtype", f"{cfg.dtype!r} is not one of {sorted(DTYPES)}")
  residual = cfg.get("residual_dtype", "float32")
  if residual not in DTYPES:
    _fail("residual_dtype", f"{residual!r} is not one of {sorted(DTYPES)}")
  policy = cfg.get("remat_policy", "full")
  if policy not in REMAT_POLICIES:
    _fail("remat_policy", f"{policy!r} is not one of {sorted(REMAT_POLICIES)}")
  impl = cfg.get("attention_impl", ATTENTION_DEFAULT)
  if impl not in ATTENTION_IMPLS:
    _fail("attention_impl", f"{impl!r} is not one of {list(ATTENTION_IMPLS)}")
  if cfg.patch_size != 4:
    _fail("patch_size", f"UPOCR's H/32 bottleneck needs 4, got {cfg.patch_size}")
  if len(e.depths) != 4:
    _fail("encoder.depths", f"needs 4 stages (H/4..H/32), got {list(e.depths)}")
  if len(d.depths) != 5:
    _fail("decoder.depths", f"needs 5 stages (H/16..H), got {list(d.depths)}")
  for part, n in (("encoder", 4), ("decoder", 5)):
    c = cfg[part]
    if len(c.num_heads) != n:
      _fail(f"{part}.num_heads", f"needs {n} entries, got {list(c.num_heads)}")
    if c.window_size < 2:
      _fail(f"{part}.window_size", f"must be >= 2, got {c.window_size}")
    if c.pretrained_window_size == 1 or c.pretrained_window_size < 0:
      _fail(f"{part}.pretrained_window_size",
            f"must be 0 (none) or >= 2, got {c.pretrained_window_size}")
    if not 0.0 <= c.drop_path_rate < 1.0:
      _fail(f"{part}.drop_path_rate", f"must be in [0, 1), got {c.drop_path_rate}")
    if any(x < 1 for x in c.depths):
      _fail(f"{part}.depths", f"every stage needs >= 1 block, got {list(c.depths)}")
  embed = e.embed_dim
  for i, heads in enumerate(e.num_heads):
    dim = embed * 2**i
    if heads < 1 or dim % heads:
      _fail(f"encoder.num_heads[{i}]",
            f"{heads} heads do not divide stage {i}'s dim {dim} "
            f"(encoder.embed_dim={embed} x 2^{i})")
  dec_embed = 8 * embed
  if dec_embed % 2**(len(d.depths) + 1):
    _fail("encoder.embed_dim", f"8 x {embed} must be divisible by "
          f"{2**(len(d.depths) + 1)} for the decoder's patch splits")
  for i, heads in enumerate(d.num_heads):
    dim = dec_embed // 2**i
    if heads < 1 or dim % heads:
      _fail(f"decoder.num_heads[{i}]",
            f"{heads} heads do not divide stage {i}'s dim {dim} "
            f"(8 x encoder.embed_dim / 2^{i})")


def check_inputs(cfg: ml_collections.ConfigDict, shape: Sequence[int]) -> None:
  """Checks an NHWC image batch shape; raises ValueError naming the problem."""
  if len(shape) != 4 or shape[-1] != 3:
    raise ValueError(f"images: expected NHWC with 3 channels, got shape "
                     f"{tuple(shape)}")
  h, w = shape[1], shape[2]
  if h % 32 or w % 32 or h == 0 or w == 0:
    raise ValueError(f"images: height and width must be positive multiples of "
                     f"32, got {h}x{w}")


def task_ids_from_names(cfg: ml_collections.ConfigDict,
                        names: Sequence[str]) -> jnp.ndarray:
  """Maps task names to ids (the index in ``config.model.tasks``)."""
  tasks = list(cfg.tasks)
  ids = []
  for n in names:
    if n not in tasks:
      raise ValueError(f"unknown task {n!r}; config.model.tasks is {tasks}")
    ids.append(tasks.index(n))
  return jnp.asarray(ids, jnp.int32)


class UPOCR(nnx.Module):
  """The UPOCR model.

  Call: ``model(images, task_ids, deterministic=True, rng=None)`` with images
  NHWC float in [0, 1] (H, W multiples of 32) and integer task ids (B,) that
  index ``config.model.tasks``. Returns the unclamped outputs at H/4, H/2, H as
  a tuple of float32 NHWC arrays. ``rng`` (a PRNG key) drives stochastic depth
  when ``deterministic=False``.
  """

  def __init__(self, model_config: ml_collections.ConfigDict, *,
               rngs: nnx.Rngs):
    """``model_config`` is ``config.model`` (configs/upocr.py)."""
    cfg = model_config
    validate_model_config(cfg)
    # Frozen (hashable) so that it is a static part of the graph definition.
    self.config = ml_collections.FrozenConfigDict(cfg)
    policy = Policy.from_config(cfg)
    dtype = policy.compute
    dim = 8 * cfg.encoder.embed_dim
    self.encoder = SwinV2Encoder(cfg, rngs=rngs, dtype=dtype,
                                 residual_dtype=policy.residual)
    self.proj = Dense(dim, dim, rngs=rngs, axes=("embed", "embed_out"),
                      dtype=dtype)
    # Kaiming normal (fan_in = dim), as nn.init.kaiming_normal_ on nn.Embedding.
    std = math.sqrt(2.0 / dim)
    self.task_embedding = param(
        rngs, lambda k, s, d: std * jax.random.normal(k, s, d),
        (len(cfg.tasks), dim), ("tasks", "prompt"))
    self.decoder = SwinV2Decoder(cfg, rngs=rngs, dtype=dtype,
                                 residual_dtype=policy.residual)

  @property
  def tasks(self) -> list[str]:
    return list(self.config.tasks)

  def __call__(self, images: Array, task_ids: Array, deterministic: bool = True,
               rng: Array | None = None, intermediates: dict | None = None
               ) -> tuple[Array, Array, Array]:
    """Runs the model; see the class docstring.

    ``intermediates``, when a dict, receives the encoder maps
    (``enc_stage1..4``), the bottleneck (``proj_out``, ``dec_in``) and each
    decoder stage after its patch split (``dec_layer{i}_up``), all NHWC: the
    checkpoints at which a port is compared with the official model.
    """
    check_inputs(self.config, images.shape)
    if not isinstance(task_ids, jax.core.Tracer):
      ids = np.asarray(task_ids)
      if ids.shape != images.shape[:1]:
        raise ValueError(f"task_ids: expected shape {images.shape[:1]}, got "
                         f"{ids.shape}")
      if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(self.tasks)):
        raise ValueError(f"task_ids: values must be in [0, {len(self.tasks)}) "
                         f"(config.model.tasks = {self.tasks}), got "
                         f"{ids.tolist()}")
    if not deterministic and rng is None:
      raise ValueError("rng: a PRNG key is required when deterministic=False "
                       "(it drives stochastic depth)")
    enc_key = dec_key = None
    if rng is not None and not deterministic:
      enc_key, dec_key = jax.random.split(rng)
    feats = self.encoder(images, enc_key, deterministic)
    x = self.proj(feats[-1])
    prompt = jnp.take(self.task_embedding[...], task_ids, axis=0)
    if intermediates is not None:
      intermediates.update({f"enc_stage{i + 1}": f for i, f in enumerate(feats)})
      intermediates["proj_out"] = x
    x = x + prompt[:, None, None, :].astype(x.dtype)
    if intermediates is not None:
      intermediates["dec_in"] = x
    return self.decoder(x, feats, dec_key, deterministic, intermediates)
