"""Topology table, HLO parsing with loop correction, TPU compile-only report.

The TPU test compiles a micro train step with the TPU compiler (libtpu, no
TPU needed); it is marked ``tpu`` (``-m "not tpu"`` skips it) and skipped
where libtpu is not installed. It takes 1-3 minutes on two CPU cores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.training.train_helpers import micro_config
from upocr_jax.fit import hlo, report, topologies


def test_topology_table_names_parse_and_numbers_are_positive():
  assert {"v4:2x2x1", "v5e:2x2", "v5e:2x4", "v5p:2x2x1", "v6e:2x2"} <= set(
      topologies.KNOWN)
  for name in topologies.KNOWN:
    t = topologies.get(name)
    g = t.generation
    assert name.startswith(g.name + ":")
    assert t.chips == int(np.prod(t.grid)) > 0
    assert g.hbm_bytes > 0 and g.peak_bf16_flops > 0 and g.hbm_bandwidth > 0
    assert len(t.chips_per_host_bounds) == 3
  assert topologies.get("v5e:2x4").chips == 8
  assert "v6e:2x2" in topologies.format_table()


def test_unknown_topology_is_one_clear_error_listing_known_names():
  with pytest.raises(ValueError, match=r"'v9x:2x2' is not a known TPU "
                     r"topology; known: v4:2x2x1, .*v5e:2x2"):
    topologies.get("v9x:2x2")


def test_loop_correction_counts_every_iteration_of_a_scan():
  def f(x, w):
    return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]

  x = jax.ShapeDtypeStruct((64, 128), jnp.float32)
  w = jax.ShapeDtypeStruct((6, 128, 128), jnp.float32)
  compiled = jax.jit(f).lower(x, w).compile()
  program = hlo.parse(compiled.as_text())
  corr = hlo.loop_correction(program)
  xla = compiled.cost_analysis()["flops"]
  one = 2 * 64 * 128 * 128
  assert xla == pytest.approx(one)  # XLA counts the loop body once
  assert xla + corr["flops"] == pytest.approx(6 * one)
  # The 5 missing iterations each read at least their weight slice.
  assert corr["bytes"] >= 5 * 128 * 128 * 4
  assert any(n == 6 for _, n in hlo.loops(program))


def test_collectives_of_a_data_parallel_reduction():
  mesh = jax.make_mesh((8,), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  x = jax.ShapeDtypeStruct((8, 1024), jnp.float32,
                           sharding=NamedSharding(mesh, P("data")))
  compiled = jax.jit(lambda x: jnp.sum(x, axis=0),
                     out_shardings=NamedSharding(mesh, P())).lower(x).compile()
  c = hlo.collectives(hlo.parse(compiled.as_text()), 8)
  assert c["all-reduce"]["count"] >= 1
  assert c["all-reduce"]["bytes"] >= 1024 * 4
  assert c["all-gather"]["count"] == 0


def test_knobs_name_remat_fsdp_and_smaller_batch():
  c = micro_config(per_task=8)
  names = [n for n, _ in report.knobs(c, 4)]
  assert names[0].startswith("remat")
  assert any(n.startswith("FSDP over 4 chips") for n in names)
  assert any(n.startswith("half the per-chip batch") for n in names)
  changed = report.with_changes(c, dict(report.knobs(c, 4))[names[0]])
  assert changed.model.remat and not c.model.remat


@pytest.mark.tpu
@pytest.mark.skipif(not topologies.libtpu_available(),
                    reason="libtpu is not installed (pip install "
                    "'upocr_jax[tpu]'); compile-only TPU reports need it")
def test_fit_report_of_a_micro_step_on_v5e_2x2(capsys):
  c = micro_config(per_task=4)
  c.model.dtype = "bfloat16"
  r = report.run(c, "v5e:2x2")
  out = capsys.readouterr().out
  assert "fits: yes" in out and "ESTIMATED step time" in out
  assert out.strip().splitlines()[-1].startswith('{"compile_only"')
  assert r["devices"] == 4 and r["fits"] is True
  m = r["per_device_bytes"]
  assert 0 < m["arguments"] < m["total"] < r["hbm_bytes"]
  # Data parallel over 4 chips: the gradients are all-reduced.
  assert r["collectives"]["all-reduce"]["count"] >= 1
  assert r["flops"] > 0 and r["roofline_estimate_s"] > 0
