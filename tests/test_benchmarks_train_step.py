"""The train-step benchmark's FLOP counter, profile summary and a tiny run
(its report's fields, not its timings)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops as flops_lib
from benchmarks import profile_summary
from tests.training import train_helpers as th


def test_flop_count_of_known_programs():
  x = jnp.ones((8, 16))
  w = jnp.ones((16, 32))
  img = jnp.ones((2, 10, 10, 3))
  k = jnp.ones((3, 3, 3, 4))

  def f(x, w, img, k):
    with jax.named_scope("mlp"):
      y = jnp.tanh(x @ w)
    z = jax.lax.conv_general_dilated(img, k, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # A 5-step loop of one (8,32)x(32,32) matmul: counted 5 times.
    loop, _ = jax.lax.scan(lambda c, _: (c @ jnp.eye(32), None), y, None,
                           length=5)
    return jnp.sum(loop) + jnp.sum(z)

  got = flops_lib.count_step_flops(f, (x, w, img, k))
  assert got["by_kind"]["mlp"] == 2 * 8 * 16 * 32
  assert got["by_kind"]["conv"] == 2 * (2 * 10 * 10 * 4) * (3 * 3 * 3)
  assert got["by_kind"]["other_linear"] == 5 * 2 * 8 * 32 * 32
  # The gradient adds two matmuls per forward matmul (d input, d weight).
  g = flops_lib.count_step_flops(
      jax.grad(lambda x, w: jnp.sum(jnp.tanh(x @ w))), (x, w))
  assert g["total"] == 2 * 2 * 8 * 16 * 32
  # Agrees with XLA's own count on a plain matmul.
  cost = jax.jit(lambda x, w: x @ w).lower(x, w).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert float(cost["flops"]) == 2 * 8 * 16 * 32


def test_profile_categories_from_hlo_metadata():
  hlo = "\n".join([
      '  %fusion.1 = f32[8,8]{1,0} fusion(%a), kind=kLoop, calls=%c1, '
      'metadata={op_name="jit(step_fn)/jvp(attn_scores)/dot_general" '
      'source_file="x.py"}',
      '  ROOT %dot.2 = f32[8,8]{1,0} dot(%a, %b), metadata={op_name='
      '"jit(step_fn)/transpose(jvp(mlp))/dot_general"}',
      '  %copy.3 = f32[8,8]{0,1} copy(%a), metadata={op_name='
      '"jit(step_fn)/transpose"}',
      '  %add.4 = f32[8]{0} add(%a, %b), metadata={op_name='
      '"jit(step_fn)/vgg/conv_general_dilated"}',
  ])
  names = profile_summary.op_names(hlo)
  assert names["dot.2"].endswith("transpose(jvp(mlp))/dot_general")
  events = [
      {"ph": "X", "dur": 3000, "args": {"hlo_op": "fusion.1"}},
      {"ph": "X", "dur": 1000, "args": {"hlo_op": "dot.2"}},
      {"ph": "X", "dur": 500, "args": {"hlo_op": "copy.3"}},
      {"ph": "X", "dur": 400, "args": {"hlo_op": "add.4"}},
      {"ph": "X", "dur": 100, "args": {"hlo_op": "unknown.9"}},
      {"ph": "X", "dur": 9999, "args": {}},  # not an XLA op: ignored
  ]
  s = profile_summary.summarise(events, names)
  assert s["attention scores+softmax"]["busy_s"] == 0.003
  assert s["mlp"]["busy_s"] == 0.001
  assert s["data movement"]["busy_s"] == 0.0005
  assert s["vgg loss"]["busy_s"] == 0.0004
  assert s["unattributed (no metadata)"]["busy_s"] == 0.0001
  np.testing.assert_allclose(sum(v["share"] for v in s.values()), 1.0,
                             atol=1e-3)


def test_tiny_run_reports_its_steps_and_busy_cpus():
  # One CPU device: the benchmark times the step on one device.
  out = th.run([sys.executable,
                os.path.join(th.REPO, "benchmarks", "train_step.py"),
                "--config=tiny", "--config.data.image_size=32", "--steps=2",
                "--warmup=0", "--nocount", "--matmul_size=64"], timeout=600)
  line = json.loads(out.stdout.strip().splitlines()[-1])
  assert len(line["step_s_all"]) == 2 and line["step_s_median"] > 0
  assert np.isfinite(line["loss"])
  # CPU seconds per wall second of the timed steps: at most every CPU.
  assert 0 < line["cpu_busy"] <= line["num_cpus"] + 0.1
