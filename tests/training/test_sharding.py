"""Parallelism by config: same loss on every mesh, FSDP really shards."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from input_pipeline import pipeline
from input_pipeline.layout import BatchLayout
from tests.training import train_helpers as th
from upocr_jax import sharding
from upocr_jax.train import optim
from upocr_jax.train import train_step

PER_TASK = 8
# One worker for the whole module (pytest -n 2 --dist loadgroup), so that the
# module fixtures (the one-device reference) are computed once.
pytestmark = pytest.mark.xdist_group("sharding")


@pytest.fixture(scope="module")
def examples():
  """8 examples per task, from the synthetic pipeline (one data shard)."""
  cfg = th.micro_config(per_task=PER_TASK)
  b = next(pipeline.create_train_iterator(cfg, 0, 1, 1))
  return {k: v for k, v in b.items() if k != "name"}


def arrange(examples, num_shards):
  """The same examples in the layout of ``num_shards`` data shards."""
  k = PER_TASK // num_shards
  order = [t * PER_TASK + d * k + j for d in range(num_shards)
           for t in range(3) for j in range(k)]
  return {key: v[order] for key, v in examples.items()}


def one_step(mesh_shape, devices, examples, host_params=None, rules=()):
  cfg = th.micro_config(per_task=PER_TASK)
  cfg.sharding.rules = tuple(cfg.sharding.rules) + tuple(rules)
  # No stochastic depth: its per-example masks follow the batch layout, which
  # differs between meshes; this test is about the sharding alone.
  cfg.model.encoder.drop_path_rate = cfg.model.decoder.drop_path_rate = 0.0
  cfg.mesh.shape = mesh_shape
  mesh = sharding.make_mesh(cfg, devices)
  shards = sharding.num_batch_shards(mesh, cfg)
  tx = optim.make_optimizer(cfg.optim, cfg.train.steps)
  setup = train_step.make_setup(cfg, mesh, tx)
  step = train_step.make_train_step(
      cfg, setup, tx, optim.make_schedule(cfg.optim, cfg.train.steps),
      BatchLayout.from_data_config(cfg.data, shards), mesh)
  params = (setup.init_params() if host_params is None
            else jax.device_put(host_params, setup.param_shardings))
  init = jax.device_get(params)
  with sharding.mesh_context(mesh, sharding.activation_rules(cfg)):
    batch = train_step.global_batch(arrange(examples, shards), mesh, cfg)
    params, _, m = step(params, setup.init_opt_state(params), None, batch,
                        np.int32(0), jax.random.key(0))
  return init, jax.device_get(m), jax.device_get(params)


@pytest.fixture(scope="module")
def reference(examples):
  return one_step((1, 1, 1), jax.devices()[:1], examples)


# Spatial sharding of the decoder's H/4..H maps, by config alone (later
# rules override earlier ones).
HIRES_HEIGHT_OVER_TENSOR = (("act_height_hires", "tensor"),)


@pytest.mark.parametrize("shape,rules", [
    ((8, 1, 1), ()), ((2, 4, 1), ()), ((2, 2, 2), ()),
    ((2, 1, 4), HIRES_HEIGHT_OVER_TENSOR)])
def test_meshes_give_the_loss_of_one_device(examples, reference, shape, rules):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"
  init0, ref, params0 = reference
  # The same initial values, placed in this mesh's shardings.
  _, m, params = one_step(shape, jax.devices(), examples, init0, rules)
  for k in ("loss", "loss/textremoval_MSR_loss", "loss/textseg_l1_loss",
            "loss/ttd_l1_loss"):
    np.testing.assert_allclose(m[k], ref[k], rtol=1e-5, err_msg=f"{shape} {k}")
  # Gradients are summed in another order across devices.
  np.testing.assert_allclose(m["grad_norm"], ref["grad_norm"], rtol=1e-4)
  # Adam's first step is ~lr * sign(g): a gradient within rounding of 0 may
  # flip, so allow a handful of such elements, not more.
  diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(
      jax.tree.leaves(params), jax.tree.leaves(params0))])
  assert np.mean(diff > 1e-6) < 1e-3, (shape, np.mean(diff > 1e-6))


def device_bytes(tree, device) -> int:
  return sum(s.data.nbytes for x in jax.tree.leaves(tree)
             for s in x.addressable_shards if s.device == device)


def total_bytes(tree) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("mesh_shape", [(1, 8, 1), (1, 2, 4)])
def test_fsdp_and_tensor_parallel_shard_params_and_optimizer(mesh_shape):
  cfg = th.micro_config(per_task=PER_TASK)
  cfg.model.encoder.embed_dim = 32   # every weight matrix divisible by 8
  cfg.mesh.shape = mesh_shape
  mesh = sharding.make_mesh(cfg)
  tx = optim.make_optimizer(cfg.optim, cfg.train.steps)
  setup = train_step.make_setup(cfg, mesh, tx)
  params = setup.init_params()
  opt_state = setup.init_opt_state(params)
  n = 8
  for tree in (params, opt_state):
    frac = device_bytes(tree, jax.devices()[0]) / total_bytes(tree)
    # 1/N plus the small replicated tensors (norms, biases of odd sizes).
    assert frac < 1.25 / n, (mesh_shape, frac)
  # Adam's moments follow their parameter's sharding.
  mu = opt_state[1][0].mu
  for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(mu)):
    assert p.sharding == s.sharding


def _constraints(jaxpr):
  """(shape, spec) of every sharding constraint, nested jaxprs included."""
  out = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "sharding_constraint":
      out.append((eqn.invars[0].aval.shape, eqn.params["sharding"].spec))
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      out += _constraints(sub)
  return out


def test_rules_shard_the_height_of_the_hires_maps_only():
  cfg = th.micro_config(per_task=PER_TASK)
  cfg.mesh.shape = (2, 1, 4)
  cfg.sharding.rules = tuple(cfg.sharding.rules) + HIRES_HEIGHT_OVER_TENSOR
  mesh = sharding.make_mesh(cfg)
  graphdef, abstract = train_step.abstract_model(cfg)

  def forward(state, images, ids):
    return nnx.merge(graphdef, state)(images, ids)

  s = cfg.data.image_size
  with sharding.mesh_context(mesh, sharding.activation_rules(cfg)):
    jaxpr = jax.make_jaxpr(forward)(
        abstract, jax.ShapeDtypeStruct((8, s, s, 3), jnp.float32),
        jax.ShapeDtypeStruct((8,), jnp.int32))
  found = _constraints(jaxpr.jaxpr)
  assert found and all(spec[0] == "data" for _, spec in found), found
  split = {shape[1] for shape, spec in found if spec[1] == "tensor"}
  assert split == {s // 4, s // 2, s}, found
  # The encoder's H/4 map keeps its height whole.
  assert any(shape[1] == s // 4 and spec[1] is None for shape, spec in found)
  assert all(spec[2:] == (None, None) for _, spec in found), found


def test_activation_rules():
  cfg = th.micro_config()
  rules = sharding.activation_rules(cfg)
  assert rules["act_batch"] == ("data", "fsdp")
  assert rules["act_height_hires"] == () and rules["mlp"] == ("tensor",)
  assert sharding.activation_rules(None, ("data",)) == {"act_batch": ("data",)}
  cfg.sharding.rules = tuple(cfg.sharding.rules) + (("act_batch", "data"),)
  with pytest.raises(sharding.ShardingConfigError,
                     match="'act_batch' is not a rule"):
    sharding.activation_rules(cfg)
  # Outside mesh_context the model's constraints are no-ops.
  x = jnp.ones((2, 4, 4, 3))
  assert sharding.constrain(x, ("act_batch", None, None, None)) is x


def test_param_table_lists_specs_and_bytes():
  cfg = th.micro_config()
  cfg.model.encoder.embed_dim = 32   # qkv kernels divisible by 2 and 4
  cfg.model.encoder.depths = (1, 1, 3, 1)
  cfg.mesh.shape = (1, 2, 4)
  mesh = sharding.make_mesh(cfg)
  setup = train_step.make_setup(cfg, mesh, optim.make_optimizer(
      cfg.optim, cfg.train.steps))
  lines = sharding.param_table(setup.abstract_params).splitlines()
  rows = {ln.split()[0]: ln.split() for ln in lines[1:-1]}
  # The 3 blocks of encoder stage 2 are one row; qkv (128, 384) is split
  # over fsdp x tensor: 196608 bytes in all, 1/8 on each device.
  qkv = rows["encoder/layers/2/blocks/*/attn/qkv"]
  assert qkv[1:5] == ["3", "kernel", "128x384", "(fsdp,tensor)"], qkv
  assert qkv[5:] == ["72.0", "KiB", "576.0", "KiB"], qkv
  assert rows["encoder/layers/2/blocks/*/norm1"][1:] == [
      "3", "bias", "128", "repl", "scale", "128", "repl", "3.0", "KiB",
      "3.0", "KiB"]
  assert "task_embedding" in rows["(top)"]
  n = sum(x.size for x in jax.tree.leaves(setup.abstract_params))
  assert lines[-1].startswith(f"total: {n:,} parameters, ")
