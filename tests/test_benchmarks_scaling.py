"""benchmarks/scaling.py and hlo.py: exact per-device memory, the HLO collective
parser.

Compiling even the micro train step takes 30-40 s of CPU here, so the
collective parser is checked on small compiled functions whose collectives are
known, and the train step is only lowered (which checks the benchmark against
the train_step API).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from benchmarks import hlo
from benchmarks import scaling
from tests.training import train_helpers as th


def _mesh(shape):
  devices = np.asarray(jax.devices()[:int(np.prod(shape))]).reshape(shape)
  return Mesh(devices, ("data", "fsdp", "tensor"),
              axis_types=(AxisType.Auto,) * 3)


def test_memory_figures_fsdp_halves_params_and_optimizer():
  assert jax.device_count() >= 2, "tests/conftest.py sets 8 fake CPU devices"
  config = scaling.load_config("tiny")
  data, fsdp = scaling.run(config, None, [(2, 1, 1), (1, 2, 1)])
  assert data["num_params"] == fsdp["num_params"] > 0
  for row in (data, fsdp):
    # AdamW: two moments per parameter, plus a few scalar counters.
    assert 2 * row["params_bytes_total"] <= row["opt_bytes_total"] < (
        2 * row["params_bytes_total"] + 1024)
  assert data["params_ratio"] == data["opt_ratio"] == 1.0
  # 1/2 plus the norms, biases and other tensors without an fsdp axis.
  assert 0.5 <= fsdp["params_ratio"] < 0.55, fsdp["params_ratio"]
  assert 0.5 <= fsdp["opt_ratio"] < 0.55, fsdp["opt_ratio"]
  assert "collectives" not in data   # no hlo_config: nothing compiled


def test_parser_data_parallel_gradient_is_one_all_reduce():
  mesh = _mesh((2, 1, 1))
  w = jax.ShapeDtypeStruct((64, 32), jnp.float32,
                           sharding=NamedSharding(mesh, P()))
  x = jax.ShapeDtypeStruct((8, 64), jnp.float32,
                           sharding=NamedSharding(mesh, P("data")))
  grad = jax.jit(jax.grad(lambda w, x: jnp.sum((x @ w) ** 2)),
                 out_shardings=NamedSharding(mesh, P()))
  coll = hlo.parse_collectives(grad.lower(w, x).compile().as_text(), 2)
  assert coll["all-reduce"]["count"] == 1, coll
  assert coll["all-reduce"]["bytes"] == 64 * 32 * 4
  # A ring all-reduce over 2 devices sends 2 (n-1)/n = 1 times the tensor.
  assert coll["all-reduce"]["wire_bytes"] == 64 * 32 * 4
  assert sum(coll[k]["count"] for k in hlo.COLLECTIVES) == 1


def test_parser_fsdp_all_gathers_the_weight():
  mesh = _mesh((1, 2, 1))
  w_sh = NamedSharding(mesh, P("fsdp", None))
  w = jax.ShapeDtypeStruct((64, 32), jnp.float32, sharding=w_sh)
  x = jax.ShapeDtypeStruct((8, 64), jnp.float32,
                           sharding=NamedSharding(mesh, P("fsdp")))

  def sgd(w, x):
    return w - 0.1 * jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w)

  text = jax.jit(sgd, out_shardings=w_sh).lower(w, x).compile().as_text()
  coll = hlo.parse_collectives(text, 2)
  gathered = coll["all-gather"]
  assert gathered["count"] >= 1, coll
  # Each all-gather here yields the whole (64, 32) weight on every device.
  assert gathered["bytes"] == gathered["count"] * 64 * 32 * 4
  assert gathered["wire_bytes"] == gathered["bytes"] // 2


def test_parser_counts_collectives_in_a_loop_per_iteration():
  mesh = _mesh((2, 1, 1))
  x = jax.ShapeDtypeStruct((8, 16), jnp.float32,
                           sharding=NamedSharding(mesh, P("data")))

  def f(x):
    # Each iteration needs the global sum of the (data-sharded) x.
    return jax.lax.fori_loop(0, 5, lambda i, y: y * jnp.sum(y), x)

  text = jax.jit(f, out_shardings=NamedSharding(mesh, P("data"))).lower(
      x).compile().as_text()
  coll = hlo.parse_collectives(text, 2)
  assert coll["all-reduce"]["count"] == 5, coll
  assert coll["all-reduce"]["bytes"] == 5 * 4


def test_parser_reads_tuple_all_reduce_and_mesh_replica_groups():
  text = "\n".join([
      "HloModule m, entry_computation_layout={()->()}",
      "",
      "%add (a: f32[], b: f32[]) -> f32[] {",
      "  %a = f32[] parameter(0)",
      "  %b = f32[] parameter(1)",
      "  ROOT %s = f32[] add(%a, %b)",
      "}",
      "",
      "ENTRY %main (p0: f32[4,8], p1: bf16[16]) -> (f32[4,8], bf16[16]) {",
      "  %p0 = f32[4,8]{1,0} parameter(0)",
      "  %p1 = bf16[16]{0} parameter(1)",
      "  ROOT %all-reduce.1 = (f32[4,8]{1,0}, /*index=1*/bf16[16]{0}) "
      "all-reduce(%p0, %p1), channel_id=1, replica_groups=mesh['axis_0'=2,"
      "'axis_1'=4] {'axis_1'}, to_apply=%add",
      "}"])
  coll = hlo.parse_collectives(text, 8)["all-reduce"]
  assert coll == {"count": 1, "arrays": 2, "bytes": 4 * 8 * 4 + 16 * 2,
                  "wire_bytes": int((4 * 8 * 4 + 16 * 2) * 2 * 3 / 4)}
  # Groups of a reordered mesh name their axes after a device_ids list.
  text = text.replace(
      "mesh['axis_0'=2,'axis_1'=4] {'axis_1'}",
      "mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) "
      "{'axis_2'}")
  coll = hlo.parse_collectives(text, 8)["all-reduce"]
  assert coll["wire_bytes"] == 4 * 8 * 4 + 16 * 2   # n = 2


@pytest.mark.parametrize("shape", [(2, 1, 1)])
def test_train_step_lowers_for_abstract_sharded_state(shape):
  config = th.micro_config(per_task=1)   # 1 per task: fitted to 2 shards
  lowered, fitted, mesh, _, param_bytes = scaling.lower_train_step(
      config, shape, jax.devices())
  assert param_bytes > 0
  assert dict(mesh.shape) == {"data": 2, "fsdp": 1, "tensor": 1}
  assert fitted.data.text_removal.batch_size == 2
  assert "func.func" in lowered.as_text()
