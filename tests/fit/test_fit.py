"""Topology table, HLO parsing with loop correction, TPU compile-only report.

The TPU test compiles a micro train step with the TPU compiler (libtpu, no
TPU needed); it is marked ``tpu`` (``-m "not tpu"`` skips it) and skipped
where libtpu is not installed. It takes 1-3 minutes on two CPU cores.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tests.training.train_helpers import micro_config
from upocr_jax.fit import hlo, report, targets, topologies


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


def test_loop_trip_count_from_the_condition_when_the_attribute_is_gone():
  """The TPU compiler's HLO has no known_trip_count: the count comes from the
  loop condition ``i < N`` (same scan as above, the attribute stripped)."""
  def f(x, w):
    return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), x, w)[0]

  x = jax.ShapeDtypeStruct((64, 128), jnp.float32)
  w = jax.ShapeDtypeStruct((6, 128, 128), jnp.float32)
  text = jax.jit(f).lower(x, w).compile().as_text()
  assert "known_trip_count" in text
  stripped = re.sub(r'"known_trip_count"\s*:\s*\{[^}]*\},?', "", text)
  assert "known_trip_count" not in stripped
  corr = hlo.loop_correction(hlo.parse(stripped))
  assert corr["flops"] == pytest.approx(5 * 2 * 64 * 128 * 128)


@pytest.mark.parametrize("start,step", [(0, 2), (2, 1), (1, 3)])
def test_loop_trip_count_honours_the_counters_start_and_step(start, step):
  """A counter that starts above 0 or steps by more than 1 (as the TPU
  compiler's windowed einsums do) runs ceil((N - start) / step) times; with
  the attribute stripped the count must match XLA's own."""
  def f(x, w):
    def body(c):
      i, x = c
      return i + step, jnp.tanh(x @ w[i])
    return jax.lax.while_loop(lambda c: c[0] < 6, body,
                              (jnp.int32(start), x))[1]

  x = jax.ShapeDtypeStruct((64, 128), jnp.float32)
  w = jax.ShapeDtypeStruct((6, 128, 128), jnp.float32)
  text = jax.jit(f).lower(x, w).compile().as_text()
  stripped = re.sub(r'"known_trip_count"\s*:\s*\{[^}]*\},?', "", text)
  trips = -(-(6 - start) // step)
  extra = (trips - 1) * 2 * 64 * 128 * 128
  assert hlo.loop_correction(hlo.parse(text))["flops"] == extra
  assert hlo.loop_correction(hlo.parse(stripped))["flops"] == extra


def test_windowed_einsum_loop_of_the_tpu_compiler_steps_by_two():
  """The TPU compiler fuses FSDP's all-gather into a dot as a loop over the
  shards that does two per iteration: ``i < 4`` with ``i += 2`` is 2 trips,
  not 4 (counted as 4, FSDP over 8 chips showed 1.66x the FLOPs of data
  parallel). Shaped like the compiler's own text."""
  text = """HloModule m

%cond (p: (f32[8,16], f32[16,16], u32[])) -> pred[] {
  %p = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) parameter(0)
  %n = u32[] constant(4)
  %i = u32[] get-tuple-element(%p), index=2
  ROOT %lt = pred[] compare(%i, %n), direction=LT
}

%body (q: (f32[8,16], f32[16,16], u32[])) -> (f32[8,16], f32[16,16], u32[]) {
  %q = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) parameter(0)
  %two..sunk = u32[] constant(2)
  %x = f32[8,16]{1,0} get-tuple-element(%q), index=0
  %w = f32[16,16]{1,0} get-tuple-element(%q), index=1
  %i = u32[] get-tuple-element(%q), index=2
  %d = f32[8,16]{1,0} dot(%x, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  %next = u32[] add(%i, %two..sunk)
  ROOT %t = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) tuple(%d, %w, %next)
}

ENTRY %main (a: f32[8,16], b: f32[16,16]) -> f32[8,16] {
  %a = f32[8,16]{1,0} parameter(0)
  %b = f32[16,16]{1,0} parameter(1)
  %zero = u32[] constant(0)
  %init = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) tuple(%a, %b, %zero)
  %loop = (f32[8,16]{1,0}, f32[16,16]{1,0}, u32[]) while(%init), condition=%cond, body=%body
  ROOT %r = f32[8,16]{1,0} get-tuple-element(%loop), index=0
}
"""
  program = hlo.parse(text)
  assert hlo.loops(program) == [("body", 2)]
  assert hlo.program_costs(program)["flops"] == 2 * (2 * 8 * 16 * 16)


def test_convolution_flops_leave_out_padding():
  """The TPU compiler writes batched dots as convolutions over a padded
  batch dimension: only window positions on real input are work. Here a
  3-wide window over 3 inputs padded by 2 on each side: 1+2+3+2+1 = 9
  (output, window) pairs, not 5 x 3."""
  text = """HloModule m

ENTRY %main (a: f32[2,3,4], b: f32[3,4,5]) -> f32[2,5,5] {
  %a = f32[2,3,4]{2,1,0} parameter(0)
  %b = f32[3,4,5]{2,1,0} parameter(1)
  ROOT %c = f32[2,5,5]{2,1,0} convolution(%a, %b), window={size=3 pad=2_2}, dim_labels=b0f_0io->b0f
}
"""
  program = hlo.parse(text)
  (conv,) = [i for i in program.comps["main"] if i.op == "convolution"]
  # batch 2 x 5 output features x 4 input features x 9 pairs, 2 FLOPs each.
  assert hlo._dot_flops(conv, program.types) == 2 * 2 * 5 * 4 * 9  # pylint: disable=protected-access


def test_knobs_name_remat_fsdp_and_smaller_batch():
  c = micro_config(per_task=8)
  names = [n for n, _ in report.knobs(c, 4)]
  assert names[0].startswith("remat")
  assert any(n.startswith("FSDP over 4 chips") for n in names)
  assert any(n.startswith("half the per-chip batch") for n in names)
  changed = report.with_changes(c, dict(report.knobs(c, 4))[names[0]])
  assert changed.model.remat and not c.model.remat
  # Remat keeping the linears first, then the least-memory policy.
  assert changed.model.remat_policy == "dots"
  assert "policy full" in names[1]


def test_a_step_the_compiler_refuses_is_reported_not_raised(monkeypatch):
  """The TPU compiler raises RESOURCE_EXHAUSTED for a step whose temporaries
  exceed HBM (as the paper step in float32 without remat on v5e does): the
  report says it does not fit, by how much, and which knobs would help."""
  c = micro_config(per_task=4)
  message = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory "
             "required for HLO temporaries (67.66G) exceeds available HBM "
             "(15.75G).")

  def refuse(*_):
    raise jax.errors.JaxRuntimeError(message)

  monkeypatch.setattr(report, "compile_train_step", refuse)
  target = targets.Target("v5e:2x2", jax.devices()[:4], hbm_bytes=16 * 2**30)
  r = report.fit_report(c, target)
  assert r["fits"] is False
  assert r["per_device_bytes"]["temporaries"] == 67.66 * 2**30
  assert r["margin_bytes"] == (15.75 - 67.66) * 2**30
  text = report.format_report(r, c)
  assert "refused by the compiler" in text and "fits: NO, 51.91 GiB over" in text
  assert "remat, policy dots" in text

  def other(*_):
    raise jax.errors.JaxRuntimeError("INTERNAL: something else")

  monkeypatch.setattr(report, "compile_train_step", other)
  with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
    report.fit_report(c, target)



# The other wording, as libtpu 0.0.42.1 gave it for one v5e chip at 18 images
# in bfloat16 (trimmed: the largest allocations follow).
_USAGE_REFUSAL = """RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU \
compile permanent error. Ran out of memory in memory space hbm. Used 15.75G of \
15.75G hbm. Exceeded hbm capacity by 4.29M.

Total hbm usage >= 16.00G:
    reserved        258.00M
    program          14.50G
    arguments         1.26G

Output size 1.21G; shares 1.21G with arguments.

Program hbm requirement 14.50G:
    global            1.27M
    scoped           769.0K
    HLO temp         14.22G (43.7% utilization: Unpadded (4.86G) Padded \
(11.12G), 21.8% fragmentation (3.10G))
    overlays        283.63M
"""


def test_a_refusal_of_the_whole_program_is_reported_with_its_items(
    monkeypatch):
  """The compiler's second wording (all of the program's usage over HBM, by a
  few MiB) is a does-not-fit report too, not a crash of the search."""
  def refuse(*_):
    raise jax.errors.JaxRuntimeError(_USAGE_REFUSAL)

  monkeypatch.setattr(report, "compile_train_step", refuse)
  target = targets.Target("v5e:2x4", jax.devices()[:1], hbm_bytes=16 * 2**30)
  c = micro_config(per_task=6)
  c.mesh.shape = (1, 1, 1)
  r = report.fit_report(c, target)
  m = r["per_device_bytes"]
  assert r["fits"] is False
  assert m["temporaries"] == 14.22 * 2**30
  assert m["arguments"] == 1.26 * 2**30
  assert m["total"] == 16.00 * 2**30
  assert r["hbm_bytes"] == 15.75 * 2**30
  assert r["margin_bytes"] == -4.29 * 2**20
  text = report.format_report(r, c)
  assert "fits: NO, 4.29 MiB over (arguments 1.26 GiB)" in text
  assert "Exceeded hbm capacity by 4.29M" in text

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
