"""Mixed precision: bfloat16 trains scanned stages; evaluation is float32."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from input_pipeline.layout import BatchLayout
from tests.training.train_helpers import micro_config
from upocr_jax import sharding
from upocr_jax.inference import runner
from upocr_jax.models import UPOCR
from upocr_jax.models.precision import Policy, full_precision
from upocr_jax.models.swinv2 import SwinStage
from upocr_jax.train import optim, train_step

STEPS = 4


def _scanned_config(dtype: str, residual: str):
  """The micro training config with two scanned stages of 2 blocks: the
  encoder's first (its input is a float32 LayerNorm output) and the
  decoder's first (its input, the prompted bottleneck, is in the compute
  dtype). One-block stages keep the compile short."""
  c = micro_config(per_task=1, steps=STEPS)
  c.model.encoder.depths = (2, 1, 1, 1)
  c.model.decoder.depths = (2, 1, 1, 1, 1)
  c.model.scan_blocks = True
  c.model.dtype, c.model.residual_dtype = dtype, residual
  c.optim.warmup_steps = 1
  return c


def _batch(config, layout):
  """A fixed batch with the pipeline's layout and dtypes."""
  rng = np.random.default_rng(0)
  b, s = layout.batch_size, config.data.image_size
  return {"image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "target": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
          "valid": np.ones((b, s, s), bool),
          "text_mask": (rng.random((b, s, s, 1)) > 0.7).astype(np.uint8),
          "task_id": np.asarray(layout.task_ids, np.int32)}


def _train_losses(dtype: str, residual: str, init=None):
  """(losses of STEPS real train steps on one fixed batch, initial state).

  ``init``: (params, opt_state) to start from, as returned by a previous
  call (copied: the step donates its arguments); the dtypes do not change
  parameter shapes or values, so one initialisation serves every policy.
  """
  config = _scanned_config(dtype, residual)
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  tx = optim.make_optimizer(config.optim, STEPS)
  setup = train_step.make_setup(config, mesh, tx)
  layout = BatchLayout.from_data_config(config.data, 1)
  step = train_step.make_train_step(
      config, setup, tx, optim.make_schedule(config.optim, STEPS), layout,
      mesh)
  if init is None:
    params = setup.init_params()
    init = jax.tree.map(jnp.copy, (params, setup.init_opt_state(params)))
  params, opt_state = jax.tree.map(jnp.copy, init)
  batch = train_step.global_batch(_batch(config, layout), mesh, config)
  out = []
  with sharding.mesh_context(mesh, sharding.activation_rules(config)):
    for i in range(STEPS):
      params, opt_state, m = step(params, opt_state, None, batch, np.int32(i),
                                  jax.random.key(0))
      assert bool(m["finite"]), (dtype, residual, i)
      out.append(float(m["loss"]))
  # Parameters (and with them the optimizer's moments) stay float32.
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype("float32")}
  return out, init


def test_bfloat16_trains_scanned_stages_like_float32():
  """The default policy (bfloat16 compute, float32 residual stream) with
  scanned stages. Before the policy, the decoder's bfloat16 input left its
  scanned blocks as float32 (post-norm residual) and tracing failed on the
  scan carry."""
  ref, init = _train_losses("float32", "float32")
  got, _ = _train_losses("bfloat16", "float32", init)
  # bfloat16 rounds to 8 significant bits (relative 2^-9 = 0.2%); through a
  # few dozen layers the outputs move by ~1% on average, and the loss, a mean
  # over every pixel, moves less (0.2% at most over these steps, measured).
  # 2% relative is well above that rounding drift and below a real error (a
  # lost residual or prompt, or a wrong cast, changes the loss by O(10%), and
  # one step of training by 5-15% here).
  np.testing.assert_allclose(got, ref, rtol=0.02)
  assert got[-1] < got[0]  # it trains: the loss goes down as in float32


def test_bfloat16_residual_stream_in_a_scanned_stage():
  """residual_dtype=bfloat16: the carry stays bfloat16 from a float32 input,
  and value and gradients follow the float32 stage."""
  stages = {dt: SwinStage(16, 3, 2, 4, 4, [0.0] * 3, 4.0, False, False,
                          None, rngs=nnx.Rngs(0), dtype=dt, scan=True,
                          residual_dtype=dt)
            for dt in (jnp.float32, jnp.bfloat16)}
  for stage in stages.values():
    for path, var in nnx.to_flat_state(nnx.state(stage, nnx.Param)):
      if path[-2] in ("norm1", "norm2") and path[-1] == "scale":
        var[...] = jnp.ones_like(var[...])  # no block is the identity
  x = jax.random.normal(jax.random.key(5), (2, 8, 8, 16))

  def run(stage):
    g, p = nnx.split(stage)

    def loss(p):
      y = nnx.merge(g, p)(x)[0]
      return jnp.mean(y.astype(jnp.float32)**2), y

    return jax.jit(jax.value_and_grad(loss, has_aux=True))(p)

  (la, ya), ga = run(stages[jnp.float32])
  (lb, yb), gb = run(stages[jnp.bfloat16])
  assert yb.dtype == jnp.bfloat16 and ya.dtype == jnp.float32
  # 3 blocks in bfloat16: ~1% relative (see above); a lost residual or
  # block changes the output at O(1).
  np.testing.assert_allclose(float(lb), float(la), rtol=0.02)
  err = float(jnp.mean(jnp.abs(yb.astype(jnp.float32) - ya)))
  assert err < 0.02 * float(jnp.mean(jnp.abs(ya))), err
  assert {v.dtype for v in jax.tree.leaves(gb)} == {jnp.dtype("float32")}
  # Over all gradients: 3% relative measured on CPU (single small leaves,
  # e.g. a logit scale, are noisier); 10% leaves room for other backends'
  # rounding, a lost residual or block would be O(1).
  diff = optax.global_norm(jax.tree.map(jnp.subtract, ga, gb))
  assert float(diff) <= 0.1 * float(optax.global_norm(ga)), float(diff)


def test_policy_and_residual_dtype_of_blocks():
  cfg = _scanned_config("bfloat16", "bfloat16").model
  assert Policy.from_config(cfg) == Policy(jnp.bfloat16, jnp.bfloat16)
  m = nnx.eval_shape(lambda: UPOCR(cfg, rngs=nnx.Rngs(0)))
  block = m.decoder.layers[0].blocks[0]
  assert block.residual_dtype == jnp.bfloat16
  assert block.attn.qkv.dtype == jnp.bfloat16
  # The position-bias MLP stays float32.
  assert block.attn.cpb_fc1.dtype == jnp.float32


def test_full_precision_view_shares_parameters_and_leaves_model_alone():
  cfg = _scanned_config("bfloat16", "bfloat16").model
  model = UPOCR(cfg, rngs=nnx.Rngs(0))
  view = full_precision(model)
  assert model.encoder.layers[0].blocks[0].attn.qkv.dtype == jnp.bfloat16
  dtypes = {getattr(mod, a) for _, mod in nnx.iter_modules(view)
            for a in ("dtype", "residual_dtype") if hasattr(mod, a)}
  assert dtypes == {jnp.float32}
  for a, b in zip(jax.tree.leaves(nnx.state(model)),
                  jax.tree.leaves(nnx.state(view))):
    assert a is b
  # Its outputs are the float32 model's (same parameters, float32 compute).
  f32 = nnx.merge(nnx.graphdef(UPOCR(_scanned_config("float32", "float32")
                                     .model, rngs=nnx.Rngs(0))),
                  nnx.state(model))
  x = jax.random.uniform(jax.random.key(0), (1, 32, 32, 3))
  ids = jnp.array([0])
  fwd = nnx.jit(lambda m, x, ids: m(x, ids)[-1])
  np.testing.assert_array_equal(np.asarray(fwd(view, x, ids)),
                                np.asarray(fwd(f32, x, ids)))


def test_eval_forward_requests_highest_precision():
  """The forward of evaluation and prediction: every dot and convolution at
  HIGHEST precision (TF32 / one-pass bfloat16 off), also for a model
  configured to compute in bfloat16."""
  cfg = _scanned_config("bfloat16", "bfloat16").model
  model = nnx.eval_shape(lambda: UPOCR(cfg, rngs=nnx.Rngs(0)))
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.uint8)
  ids = jax.ShapeDtypeStruct((1,), jnp.int32)
  text = runner.lower_forward(model, images, ids).as_text()
  ops = re.findall(r"stablehlo\.(?:dot_general|convolution)[^\n]*", text)
  assert len(ops) > 10
  for op in ops:
    assert "HIGHEST" in op, op
  assert "bf16" not in text


def test_eval_forward_returns_only_the_image_and_compiles_once():
  """The eval forward is a pure function of the model's state: its program
  outputs the image alone (nnx.jit would also copy every parameter out), and a
  second call with the same shapes reuses the compiled program."""
  cfg = _scanned_config("float32", "float32").model
  model = UPOCR(cfg, rngs=nnx.Rngs(0))
  images = jnp.zeros((1, 32, 32, 3), jnp.uint8)
  ids = jnp.zeros((1,), jnp.int32)
  text = runner.lower_forward(model, images, ids).as_text()
  results = re.search(r"func\.func public @main\(.*?\) -> \((.*?)\) \{",
                      text, re.S)
  assert results and results.group(1).count("tensor<") == 1, (
      results and results.group(1))
  runner.forward(model, images, ids)
  before = runner._forward._cache_size()  # pylint: disable=protected-access
  out = runner.forward(model, images + 1, ids)
  assert runner._forward._cache_size() == before  # pylint: disable=protected-access
  assert out.shape == (1, 32, 32, 3) and out.dtype == jnp.float32


def test_forward_fn_prepares_the_model_once(monkeypatch):
  """predict_batches (and upocr-eval) make the float32 view once, not per
  batch, and the prepared function gives forward's outputs (HIGHEST
  precision included: a bfloat16 model's view computes in float32)."""
  cfg = _scanned_config("bfloat16", "bfloat16").model
  model = UPOCR(cfg, rngs=nnx.Rngs(0))
  views = []
  real = runner.precision.full_precision
  monkeypatch.setattr(runner.precision, "full_precision",
                      lambda m: views.append(m) or real(m))
  images = np.asarray(jax.random.randint(jax.random.key(1), (5, 32, 32, 3),
                                         0, 256), np.uint8)
  out = runner.predict_batches(model, images, task_id=1, batch_size=2)
  assert len(views) == 1
  run = runner.forward_fn(model)
  ids = jnp.ones((2,), jnp.int32)
  np.testing.assert_array_equal(out[:2], np.asarray(run(images[:2], ids)))
  np.testing.assert_array_equal(
      np.asarray(run(images[2:4], ids)),
      np.asarray(runner.forward(model, images[2:4], ids)))
  assert len(views) == 3
