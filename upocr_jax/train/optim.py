"""The UPOCR optimiser: AdamW, 0.1x encoder lr, global-norm clipping, schedule.

Matches the official ``optim/__init__.py`` / ``engine/train.py`` /
``optim/lr_scheduler.py``:

* gradients are clipped first to a global norm of 0.1 over all trainable
  parameters, as ``torch.nn.utils.clip_grad_norm_`` does it (scale
  ``min(1, max_norm / (norm + 1e-6))``);
* AdamW (betas 0.9/0.999, eps 1e-8 outside the square root, decoupled weight
  decay 1e-4 on EVERY parameter, biases and norms included), whose weight decay,
  like torch's, is multiplied by the group's lr;
* parameters whose path starts with ``encoder`` get 0.1x the lr (the official
  groups split on ``"encoder" in name``; in this model only the encoder's
  parameters have it). AdamW's update is linear in the lr, so scaling the
  encoder's final updates by 0.1 is the official second parameter group, with a
  single optimiser state.

Works on any parameter pytree, e.g. ``nnx.state(model, nnx.Param)`` or its pure
dict: ``tx.init(params)``, ``tx.update(grads, opt_state, params)``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from upocr_jax import config_checks


def make_schedule(optim_config: ml_collections.ConfigDict,
                  num_steps: int) -> optax.Schedule:
  """The official per-epoch learning rate, expressed in steps.

  With u = ``steps_per_epoch``, E = num_steps / u "epochs", W = warmup_steps
  / u and e = floor(step / u), the lr of step ``step`` (0-based, the count of
  updates already applied) is the official ``linear_decay_lr`` list's entry e:

    e <  W:  warmup_init_lr + (lr - warmup_init_lr) * e / W
    e >= W:  max((E - 1 - e) * lr / E, min_lr)

  (the official decay list is ``max(i * lr / E, min_lr)`` for i < E - W,
  reversed, so its first decay epoch is at (E - 1 - W) / E of the peak, not at
  the peak). Paper: u = 200, E = 400, W = 10 gives the official staircase
  exactly: steps 0..199 at 1e-4, 200..399 at 1.4e-4, ..., 1800..1999 at
  4.6e-4, 2000..2199 at 389/400 * 5e-4, down to the 1e-5 floor from step
  78,400 (epoch 392). u = 1 applies the same formula with every step an
  "epoch" (a smooth ramp and decay). Steps past the end stay at ``min_lr``.

  Args:
    optim_config: ``config.optim``.
    num_steps: the schedule's length, ``config_checks.schedule_steps(config)``
      in training.
  """
  oc = optim_config
  total = num_steps
  config_checks.check_optim(oc, total)
  u = int(oc.steps_per_epoch)
  epochs, warm = total // u, oc.warmup_steps // u
  peak, init, floor = float(oc.lr), float(oc.warmup_init_lr), float(oc.min_lr)

  def schedule(step):
    e = (jnp.asarray(step) // u).astype(jnp.float32)
    up = init + (peak - init) * e / max(warm, 1)
    down = jnp.maximum((epochs - 1 - e) * peak / epochs, floor)
    return jnp.where(e < warm, up, down)

  return schedule


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """Global-norm clipping as ``torch.nn.utils.clip_grad_norm_`` (+1e-6)."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: g * coef.astype(g.dtype), updates), state

  return optax.GradientTransformation(init_fn, update_fn)


def _key_name(k: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def is_encoder_path(path: tuple, prefix: str = "encoder") -> bool:
  """Whether a pytree path (from ``tree_map_with_path``) is under ``prefix``."""
  return bool(path) and _key_name(path[0]) == prefix


def scale_encoder(ratio: float, prefix: str = "encoder"
                  ) -> optax.GradientTransformation:
  """Multiplies the updates of the parameters under ``prefix`` by ``ratio``."""

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree_util.tree_map_with_path(
        lambda p, u: u * jnp.asarray(ratio, u.dtype)
        if is_encoder_path(p, prefix) else u, updates)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def make_optimizer(optim_config: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """Clip -> AdamW(schedule) -> encoder lr ratio, from ``config.optim``.

  Args:
    optim_config: ``config.optim``.
    num_steps: the schedule's length (see ``make_schedule``).
  """
  oc = optim_config
  parts = []
  if oc.clip_grad_norm > 0:
    parts.append(clip_by_global_norm_torch(float(oc.clip_grad_norm)))
  parts.append(optax.adamw(make_schedule(oc, num_steps), b1=oc.b1, b2=oc.b2,
                           eps=oc.eps, weight_decay=oc.weight_decay))
  if oc.encoder_lr_ratio != 1.0:
    parts.append(scale_encoder(float(oc.encoder_lr_ratio)))
  return optax.chain(*parts)
