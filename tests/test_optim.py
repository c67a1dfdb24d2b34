"""Optimiser: official schedule in steps, encoder lr ratio, clipping, AdamW."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import loss_optim_config
from upocr_jax.train import optim


def _official_epoch_lrs(lr=5e-4, warmup_min_lr=1e-4, min_lr=1e-5, epochs=400,
                        warmup_epochs=10):
  """The official per-epoch list: a linear warm-up list, then the decay list
  max(i * lr / epochs, min_lr), i < epochs - warmup_epochs, in reverse."""
  warm = [warmup_min_lr + (lr - warmup_min_lr) * i / warmup_epochs
          for i in range(warmup_epochs)]
  decay = [max(i * lr / epochs, min_lr) for i in range(epochs - warmup_epochs)]
  return np.array(warm + decay[::-1])


def test_paper_schedule_is_the_official_staircase():
  sched = optim.make_schedule(loss_optim_config.get_optim_config("paper"),
                             num_steps=80_000)
  steps = np.arange(80_000)
  got = np.asarray(jax.jit(sched)(steps))
  want = np.repeat(_official_epoch_lrs(), 200)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  key = {0: 1e-4, 199: 1e-4, 200: 1.4e-4, 1999: 4.6e-4,
         2000: 389 / 400 * 5e-4, 40_000: 199 / 400 * 5e-4,
         78_199: 1.125e-5, 78_399: 1e-5, 78_400: 1e-5, 79_999: 1e-5,
         90_000: 1e-5}
  for step, lr in key.items():
    np.testing.assert_allclose(float(sched(step)), lr, rtol=1e-6, err_msg=step)


def test_tiny_schedule_per_step_and_num_steps_override():
  oc = loss_optim_config.get_optim_config("tiny")
  n = 3_800  # The tiny run's config.train.steps.
  sched = optim.make_schedule(oc, n)
  lrs = np.asarray(jax.jit(sched)(np.arange(n)))
  want = _official_epoch_lrs(oc.lr, oc.warmup_init_lr, oc.min_lr, n,
                             oc.warmup_steps)
  np.testing.assert_allclose(lrs, want, rtol=1e-6)
  assert lrs[0] == pytest.approx(oc.warmup_init_lr)
  assert lrs.max() <= oc.lr and lrs[-1] == pytest.approx(oc.min_lr)
  # num_steps (e.g. config.train.steps) stretches the decay.
  long = optim.make_schedule(oc, num_steps=4000)
  assert float(long(2000)) > float(sched(2000))


def test_schedule_config_errors():
  oc = loss_optim_config.get_optim_config("paper")
  with pytest.raises(ValueError, match=r"config\.optim\.steps_per_epoch"):
    optim.make_schedule(oc, num_steps=1234)
  oc.warmup_steps = 90_000
  with pytest.raises(ValueError, match=r"config\.optim\.warmup_steps"):
    optim.make_schedule(oc, num_steps=80_000)


STEPS = 10  # The schedule length of the small optimiser tests.


def _small_optim_config(**kw):
  oc = loss_optim_config.get_optim_config("tiny")
  oc.warmup_steps, oc.steps_per_epoch = 2, 1
  oc.update(kw)
  return oc


def _toy_params():
  w = jnp.array([[0.5, -1.0], [2.0, 0.25]])
  return {"encoder": {"w": w}, "decoder": {"w": w}, "proj": {"b": w[0]}}


def test_encoder_gets_a_tenth_of_the_update():
  oc = _small_optim_config(clip_grad_norm=0.0)
  tx = optim.make_optimizer(oc, STEPS)
  params = _toy_params()
  grads = jax.tree.map(lambda p: 0.3 * p + 0.1, params)
  upd, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  np.testing.assert_allclose(upd["encoder"]["w"], 0.1 * upd["decoder"]["w"],
                             rtol=1e-6)
  # First AdamW step: -lr * (g / (|g| + eps) + wd * p), lr = warmup_init_lr.
  g, p = grads["decoder"]["w"], params["decoder"]["w"]
  want = -oc.warmup_init_lr * (g / (jnp.abs(g) + oc.eps) + oc.weight_decay * p)
  np.testing.assert_allclose(upd["decoder"]["w"], want, rtol=1e-5)


def test_clipping_matches_torch_clip_grad_norm():
  clip = optim.clip_by_global_norm_torch(0.1)
  big = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[0.0]])}  # Norm 5.
  out, _ = clip.update(big, clip.init(big))
  np.testing.assert_allclose(out["a"], np.array([3.0, 4.0]) * 0.1 / (5 + 1e-6),
                             rtol=1e-6)
  small = {"a": jnp.array([0.03, 0.04]), "b": jnp.array([[0.0]])}
  out, _ = clip.update(small, clip.init(small))
  np.testing.assert_array_equal(out["a"], small["a"])


def _torch_adamw_reference(params, grads_seq, oc, lrs):
  """numpy AdamW as torch's (two groups, clip_grad_norm_ first)."""
  p = {k: np.asarray(v["w"], np.float64) for k, v in params.items()
       if "w" in v}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
    g = {k: np.asarray(grads[k]["w"], np.float64) for k in p}
    norm = np.sqrt(sum((x ** 2).sum() for x in g.values()))
    coef = min(oc.clip_grad_norm / (norm + 1e-6), 1.0)
    for k in p:
      glr = lr * (oc.encoder_lr_ratio if k == "encoder" else 1.0)
      gk = g[k] * coef
      p[k] = p[k] * (1 - glr * oc.weight_decay)
      m[k] = oc.b1 * m[k] + (1 - oc.b1) * gk
      v[k] = oc.b2 * v[k] + (1 - oc.b2) * gk * gk
      denom = np.sqrt(v[k]) / np.sqrt(1 - oc.b2 ** t) + oc.eps
      p[k] = p[k] - glr / (1 - oc.b1 ** t) * m[k] / denom
  return p


def test_three_steps_match_torch_adamw_with_clipping_and_schedule():
  oc = _small_optim_config()
  tx = optim.make_optimizer(oc, STEPS)
  params = {"encoder": {"w": jnp.array([[0.5, -1.0], [2.0, 0.25]])},
            "decoder": {"w": jnp.array([[1.5, 0.5], [-0.5, 0.75]])}}
  rng = np.random.default_rng(0)
  grads_seq = [jax.tree.map(lambda x: jnp.asarray(
      rng.normal(size=x.shape), jnp.float32), params) for _ in range(3)]

  @jax.jit
  def step(params, state, grads):
    upd, state = tx.update(grads, state, params)
    return optax.apply_updates(params, upd), state

  state, got = tx.init(params), params
  for grads in grads_seq:
    got, state = step(got, state, grads)
  lrs = [float(optim.make_schedule(oc, STEPS)(s)) for s in range(3)]
  want = _torch_adamw_reference(params, grads_seq, oc, lrs)
  for k in want:
    np.testing.assert_allclose(got[k]["w"], want[k], rtol=1e-5, atol=1e-7)


class _Toy(nnx.Module):

  def __init__(self):
    self.encoder = nnx.Linear(2, 2, rngs=nnx.Rngs(0))
    self.decoder = nnx.Linear(2, 2, rngs=nnx.Rngs(1))


def test_works_on_nnx_param_state():
  model = _Toy()
  params = nnx.state(model, nnx.Param)
  oc = _small_optim_config(clip_grad_norm=0.0)
  tx = optim.make_optimizer(oc, STEPS)
  ones = jax.tree.map(jnp.ones_like, params)
  upd, _ = jax.jit(tx.update)(ones, tx.init(params), params)
  upd = nnx.to_pure_dict(upd)
  p = nnx.to_pure_dict(params)
  # First step: warmup_init_lr.
  lr, wd, eps = oc.warmup_init_lr, oc.weight_decay, oc.eps
  for name, ratio in (("encoder", 0.1), ("decoder", 1.0)):
    want = -ratio * lr * (1 / (1 + eps) + wd * p[name]["kernel"])
    np.testing.assert_allclose(upd[name]["kernel"], want, rtol=1e-5)
