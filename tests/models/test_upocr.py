"""Model API, sizes, configuration errors and options."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import upocr as upocr_config
from upocr_jax.models import (UPOCR, ConfigError, VGG16Features,
                              task_ids_from_names)
from upocr_jax.models.layers import FrozenParam

# Module fixtures are built once: one worker runs the module (--dist loadgroup).
pytestmark = pytest.mark.xdist_group("models")


def n_params(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def tiny(**overrides):
  """``config.model`` of the tiny config with dotted-key overrides."""
  cfg = upocr_config.get_config("tiny").model
  for k, v in overrides.items():
    node = cfg
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return cfg


# Jitted calls: eager execution compiles every op separately and is much slower.
forward = nnx.jit(lambda m, x, ids: m(x, ids))


def open_blocks(model):
  """Post-norm scales 1 instead of 0, so that no block is the identity."""
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if len(path) > 2 and path[-2] in ("norm1", "norm2") and path[-1] == "scale":
      var[...] = jnp.ones_like(var[...])


@functools.lru_cache(maxsize=None)
def _tiny_model() -> UPOCR:
  return UPOCR(tiny(), rngs=nnx.Rngs(0))


@pytest.fixture
def tiny_model():
  # Built once per worker: as a module fixture it was rebuilt when
  # xdist interleaved this module's tests with test_exactness.py's. No test
  # changes it.
  return _tiny_model()


def test_paper_parameter_counts_from_eval_shape():
  model = nnx.eval_shape(
      lambda: UPOCR(upocr_config.get_config("paper").model,
                    rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  assert n_params(params) == 108_157_401
  assert n_params(params["encoder"]) == 48_960_762
  assert n_params(params["decoder"]) == 58_603_743
  assert n_params(params["proj"]) == 590_592
  assert n_params(params["task_embedding"]) == 2_304
  vgg = nnx.eval_shape(lambda: VGG16Features(rngs=nnx.Rngs(0)))
  assert n_params(nnx.state(vgg, FrozenParam)) == 1_735_488
  assert n_params(nnx.state(vgg, nnx.Param)) == 0  # never trained
  # eval_shape allocated nothing.
  assert all(isinstance(x, jax.ShapeDtypeStruct)
             for x in jax.tree.leaves(params))


def test_every_parameter_has_logical_axes():
  model = nnx.eval_shape(lambda: UPOCR(tiny(), rngs=nnx.Rngs(0)))
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    axes = var.get_metadata().get("logical_axes")
    assert axes is not None and len(axes) == len(var.shape), path


@pytest.mark.parametrize("h,w", [(64, 64), (256, 192), (96, 160)])
def test_output_shapes_square_and_not(tiny_model, h, w):
  outs = forward(tiny_model, jnp.zeros((2, h, w, 3)), jnp.array([0, 2]))
  assert [o.shape for o in outs] == [(2, h // 4, w // 4, 3),
                                     (2, h // 2, w // 2, 3), (2, h, w, 3)]
  assert all(o.dtype == jnp.float32 for o in outs)


def test_task_ids_change_the_output_and_prompt_gets_gradient(tiny_model):
  x = jax.random.uniform(jax.random.key(1), (1, 64, 64, 3))
  outs = [forward(tiny_model, x, jnp.array([t]))[2] for t in range(3)]
  for a in range(3):
    for b in range(a + 1, 3):
      assert float(jnp.max(jnp.abs(outs[a] - outs[b]))) > 1e-3

  graphdef, params = nnx.split(tiny_model)

  def loss(p):
    return jnp.mean(nnx.merge(graphdef, p)(x, jnp.array([1]))[2] ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  g = np.asarray(grads["task_embedding"][...])
  assert np.abs(g[1]).sum() > 0          # the used prompt learns
  assert np.abs(g[[0, 2]]).sum() == 0    # the others do not


def test_task_names_and_bad_task_ids(tiny_model):
  cfg = tiny()
  assert task_ids_from_names(cfg, ["text segmentation", "text removal"]
                             ).tolist() == [2, 0]
  with pytest.raises(ValueError, match="unknown task 'ocr'"):
    task_ids_from_names(cfg, ["ocr"])
  with pytest.raises(ValueError, match="task_ids"):
    tiny_model(jnp.zeros((1, 64, 64, 3)), jnp.array([3]))


@pytest.mark.parametrize("field,value,needle", [
    ("encoder.num_heads", [1, 5, 2, 4], "encoder.num_heads[1]"),
    ("decoder.num_heads", [5, 2, 2, 1, 1], "decoder.num_heads[0]"),
    ("encoder.depths", [1, 1, 1], "encoder.depths"),
    ("dtype", "float8", "dtype"),
    ("tasks", ["text removal", "text removal"], "tasks"),
])
def test_invalid_configs_name_the_field(field, value, needle):
  with pytest.raises(ConfigError) as e:
    UPOCR(tiny(**{field: value}), rngs=nnx.Rngs(0))
  assert f"config.model.{needle}" in str(e.value)


@pytest.mark.parametrize("shape", [(1, 48, 64, 3), (1, 64, 70, 3),
                                   (1, 64, 64, 1)])
def test_bad_image_shapes_fail_before_tracing(tiny_model, shape):
  with pytest.raises(ValueError, match="images"):
    jax.jit(lambda x: tiny_model(x, jnp.zeros((1,), jnp.int32)))(
        jnp.zeros(shape))


def test_mask_padding_only_changes_padded_maps():
  x = jax.random.uniform(jax.random.key(2), (1, 64, 64, 3))
  ids = jnp.array([0])
  base = UPOCR(tiny(), rngs=nnx.Rngs(0))
  masked = UPOCR(tiny(mask_padding=True), rngs=nnx.Rngs(0))
  for m in (base, masked):
    open_blocks(m)
  # 64x64: the H/32 map is 2x2 < the tiny window 4, so padding is used.
  a, b = forward(base, x, ids)[2], forward(masked, x, ids)[2]
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  # With window 2 nothing is padded anywhere, and the option is a no-op.
  small = dict(**{"encoder.window_size": 2, "decoder.window_size": 2,
                  "encoder.pretrained_window_size": 2,
                  "decoder.pretrained_window_size": 2})
  c = forward(UPOCR(tiny(**small), rngs=nnx.Rngs(0)), x, ids)[2]
  d = forward(UPOCR(tiny(mask_padding=True, **small), rngs=nnx.Rngs(0)),
              x, ids)[2]
  np.testing.assert_array_equal(np.asarray(c), np.asarray(d))


def test_padded_tokens_get_no_attention_with_mask_padding():
  from upocr_jax.models.swinv2 import attention_mask
  # A 4x4 map in an 8x8 window: 48 of 64 keys are padding.
  mask = attention_mask(4, 4, 8, 0, True)
  weights = jax.nn.softmax(jnp.zeros((64, 64)) + mask[0], axis=-1)
  assert float(weights.reshape(64, 8, 8)[:, 4:, :].sum()) < 1e-30
  assert attention_mask(4, 4, 8, 0, False) is None  # the official behaviour


def test_bfloat16_and_remat_options():
  x = jax.random.uniform(jax.random.key(3), (1, 64, 64, 3))
  ids = jnp.array([2])
  ref = UPOCR(tiny(), rngs=nnx.Rngs(0))
  bf16 = UPOCR(tiny(dtype="bfloat16"), rngs=nnx.Rngs(0))
  remat = UPOCR(tiny(remat=True), rngs=nnx.Rngs(0))
  r = forward(ref, x, ids)[2]
  # bfloat16 keeps ~3 significant digits: compare on average, not worst case.
  err = float(jnp.mean(jnp.abs(forward(bf16, x, ids)[2] - r)))
  assert err < 0.03 * float(jnp.mean(jnp.abs(r))), err
  # Params stay float32 whatever the compute dtype.
  assert all(v.dtype == jnp.float32 for v in
             jax.tree.leaves(nnx.state(bf16, nnx.Param)))

  def grads(m):
    g, p = nnx.split(m)
    return jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(g, p)(x, ids)[2])))(p)

  ga, gb = grads(ref), grads(remat)
  # Recomputed inside scanned stages, a few gradients differ in the last
  # float32 bits; a remat bug would change them at O(1).
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), ga, gb)


def test_remat_policy_dots_keeps_linears_and_recomputes_scores():
  """"dots" gives the same gradients as no remat, recomputing fewer matmuls
  than "full" (only the batched attention-score einsums), and bad names fail."""
  x = jax.random.uniform(jax.random.key(3), (1, 32, 32, 3))
  ids = jnp.array([1])
  deep = {"encoder.depths": (1, 2, 1, 1), "decoder.depths": (1, 1, 2, 1, 1)}

  def grad_fn(**kw):
    g, p = nnx.split(UPOCR(tiny(**deep, **kw), rngs=nnx.Rngs(0)))
    f = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(g, p)(x, ids)[2])))
    return f, p

  dots = {}
  grads = {}
  for name, kw in (("none", {}), ("full", {"remat": True}),
                   ("dots", {"remat": True, "remat_policy": "dots"})):
    f, p = grad_fn(**kw)
    dots[name] = f.lower(p).compile().as_text().count(" dot(")
    grads[name] = f(p)
  assert dots["none"] < dots["dots"] < dots["full"], dots
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               grads["none"], grads["dots"])
  with pytest.raises(ValueError, match="remat_policy"):
    UPOCR(tiny(remat=True, remat_policy="some"), rngs=nnx.Rngs(0))


def test_drop_path_needs_rng_and_is_random():
  m = UPOCR(tiny(**{"encoder.drop_path_rate": 0.5}), rngs=nnx.Rngs(0))
  open_blocks(m)
  x = jax.random.uniform(jax.random.key(4), (2, 64, 64, 3))
  ids = jnp.array([0, 1])
  with pytest.raises(ValueError, match="rng"):
    m(x, ids, deterministic=False)
  train = nnx.jit(lambda m, x, ids, k: m(x, ids, deterministic=False, rng=k))
  a = train(m, x, ids, jax.random.key(0))[2]
  b = train(m, x, ids, jax.random.key(1))[2]
  c = train(m, x, ids, jax.random.key(0))[2]
  d = forward(m, x, ids)[2]
  assert float(jnp.max(jnp.abs(a - b))) > 1e-4
  np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
  assert float(jnp.max(jnp.abs(a - d))) > 1e-4


def test_scan_blocks_config_scans_every_multi_block_stage():
  cfg = tiny(scan_blocks=True, **{"encoder.depths": (1, 2, 4, 1),
                                  "decoder.depths": (1, 4, 1, 3, 1)})
  m = nnx.eval_shape(lambda: UPOCR(cfg, rngs=nnx.Rngs(0)))
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1,), jnp.int32)
  g, p = nnx.split(m)
  hlo = jax.jit(lambda p, x, ids: nnx.merge(g, p)(x, ids)[2]).lower(
      p, x, ids).as_text()
  # One loop per stage of 2+ blocks, each with a single block body (one
  # attention: two score einsums per block, not per stage).
  assert hlo.count("stablehlo.while") == 4
  assert [s.scan for s in m.encoder.layers] == [True] * 4


@pytest.mark.parametrize("depth,mask_padding", [(4, False), (3, True)])
def test_scanned_blocks_match_the_loop(depth, mask_padding):
  """A stage as one lax.scan over its blocks: the loop's numbers, with the
  shift passed as data (odd depth: an unshifted block last; 6x6 maps are
  padded to the 4x4 windows)."""
  from upocr_jax.models.swinv2 import SwinStage
  stages = {}
  rates = [0.1, 0.2, 0.3, 0.4][:depth]
  variants = [("loop", False, False), ("scan", True, False)]
  if depth == 4:  # remat inside the scan, checked once
    variants.append(("scan+remat", True, True))
  for name, scan, remat in variants:
    stages[name] = SwinStage(16, depth, 2, 4, 4, rates, 4.0, mask_padding,
                             remat, None, rngs=nnx.Rngs(0), scan=scan)
    for path, var in nnx.to_flat_state(nnx.state(stages[name], nnx.Param)):
      if path[-2] in ("norm1", "norm2") and path[-1] == "scale":
        var[...] = jnp.ones_like(var[...])  # no block is the identity
  # Same parameters (one module per block either way).
  jax.tree.map(np.testing.assert_array_equal, nnx.state(stages["loop"]),
               nnx.state(stages["scan"]))
  x = jax.random.normal(jax.random.key(5), (3, 6, 6, 16))

  results = {}

  def run(name, deterministic):  # each program compiled once
    if (name, deterministic) not in results:
      g, p = nnx.split(stages[name])

      def loss(p):
        y = nnx.merge(g, p)(x, jax.random.key(7), deterministic)[0]
        return jnp.mean(y**2), y

      results[name, deterministic] = jax.jit(
          jax.value_and_grad(loss, has_aux=True))(p)
    return results[name, deterministic]

  def check(name, deterministic, out_tol, grad_tol):
    (_, a), ga = run("loop", deterministic)
    (_, b), gb = run(name, deterministic)
    np.testing.assert_allclose(a, b, atol=out_tol)
    for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
      assert float(jnp.max(jnp.abs(u - v))) <= grad_tol * (
          float(jnp.max(jnp.abs(u))) + 1e-6), (name, deterministic)

  check("scan", True, 1e-5, 1e-5)
  if "scan+remat" in stages:
    check("scan+remat", True, 1e-5, 1e-5)
  # With stochastic depth only rounding differs (XLA turns the loop's
  # x / keep into x * (1 / keep); scanned blocks divide): a block dropped in
  # one and kept in the other would change the outputs by O(1).
  check("scan", False, 1e-3, 1e-2)
  (_, d), _ = run("scan", True)
  (_, s), _ = run("scan", False)
  assert float(jnp.max(jnp.abs(d - s))) > 0.1  # some samples were dropped


@pytest.mark.parametrize("h,w,window,shift,pad", [
    (16, 16, 8, 4, False), (12, 20, 8, 4, True), (12, 20, 8, 0, True),
    (4, 4, 8, 4, False), (32, 32, 16, 8, True), (16, 16, 8, 0, False)])
def test_compact_attention_mask_expands_to_the_dense_one(h, w, window, shift,
                                                         pad):
  from upocr_jax.models.swinv2 import (additive_mask, attention_mask,
                                       attention_mask_parts)
  dense = attention_mask(h, w, window, shift, pad)
  got = additive_mask(attention_mask_parts(h, w, window, shift, pad))
  if dense is None:
    assert got is None
  else:
    np.testing.assert_array_equal(np.asarray(got), dense)
