"""Speed, FLOPs, MFU and memory of the UPOCR train step.

Usage: python benchmarks/train_step.py [--config=CONFIG] [--batch_per_task=1]
    [--steps=3] [--config.FIELD=VALUE ...] [flags]

Example:
  python benchmarks/train_step.py --config=paper --batch_per_task=1 --steps=3 \\
      --config.model.dtype=bfloat16

Builds the real train step (``upocr_jax.train.train_step``: loss, gradients, AdamW,
clipping, the finite guard) on one device with random weights and a random
batch (speed does not depend on either), with the VGG16 perceptual/style loss
on random frozen weights when the config asks for it. Reports

* compile time (lowering and XLA compilation, separately);
* median step time after ``--warmup`` steps, and images/s;
* FLOPs per step from XLA's cost analysis of the compiled step, cross-checked
  by counting every matmul / convolution of the step's jaxpr
  (``benchmarks/flops.py``, split into attention, MLP, other linears, convs
  and the VGG loss). XLA counts a while loop's body once (scanned blocks), so
  the count is also given that way for the comparison;
* the model's FLOPs (the count without remat recomputation), achieved model
  FLOP/s, and MFU: their ratio to a large square matmul in the same dtype
  measured in the same run (``--matmul_size``);
* XLA's memory analysis of the compiled step (arguments, outputs, temporaries)
  and the process's peak resident memory;
* with ``--profile``, where the time goes (``benchmarks/profile_summary.py``).

Prints one JSON line with every figure.
"""

from __future__ import annotations

import json
import platform
import resource
import statistics
import sys
import time

from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

sys.path.insert(0, __file__.rsplit("/", 2)[0])  # the repo root, for configs/

from benchmarks import flops as flops_lib  # noqa: E402
from input_pipeline.layout import BatchLayout  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax import config_checks  # noqa: E402
from upocr_jax import sharding  # noqa: E402
from upocr_jax.tasks import TASK_KEYS  # noqa: E402
from upocr_jax.train import optim  # noqa: E402
from upocr_jax.train import train_step  # noqa: E402
from upocr_jax.models.vgg import VGG16Features  # noqa: E402


def random_batch(config, layout: BatchLayout, seed: int = 0):
  """A batch of the pipeline's layout and dtypes, random content."""
  rng = np.random.default_rng(seed)
  b, s = layout.batch_size, config.data.image_size
  return {
      "image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
      "target": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
      "valid": rng.random((b, s, s)) > 0.05,
      "text_mask": (rng.random((b, s, s, 1)) > 0.2).astype(np.uint8),
      "task_id": np.asarray(layout.task_ids, np.int32),
  }


def _available_bytes() -> int:
  """MemAvailable of /proc/meminfo (0 where there is none)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def matmul_peak(n: int, dtype, repeats: int = 5) -> float:
  """FLOP/s of a jitted n x n x n matmul (median of ``repeats``)."""
  a = jax.random.normal(jax.random.key(1), (n, n), dtype)
  b = jax.random.normal(jax.random.key(2), (n, n), dtype)
  f = jax.jit(lambda x, y: x @ y)
  jax.block_until_ready(f(a, b))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(a, b))
    times.append(time.perf_counter() - t)
  return 2 * n**3 / statistics.median(times)


def _cpu_seconds() -> float:
  """User + system CPU time of this process so far."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def make_step(config):
  """(jitted train step, setup, layout, mesh, VGG graphdef or None)."""
  mesh = sharding.make_mesh(config, jax.devices()[:1]) \
      if jax.device_count() > 1 else sharding.make_mesh(config)
  n = config_checks.schedule_steps(config)
  tx = optim.make_optimizer(config.optim, n)
  schedule = optim.make_schedule(config.optim, n)
  setup = train_step.make_setup(config, mesh, tx)
  layout = BatchLayout.from_data_config(config.data, 1)
  vgg_graphdef = None
  if config.loss.perceptual or config.loss.style:
    vgg_graphdef = nnx.graphdef(nnx.eval_shape(
        lambda: VGG16Features(rngs=nnx.Rngs(0))))
  step = train_step.make_train_step(config, setup, tx, schedule, layout, mesh,
                                    vgg_graphdef)
  return step, setup, layout, mesh, vgg_graphdef


def _set_batch(config, batch_per_task: int) -> None:
  for key in TASK_KEYS:
    config.data[key].batch_size = batch_per_task


def build(config, batch_per_task: int):
  """(jitted step, its arguments, layout, mesh) with random values."""
  _set_batch(config, batch_per_task)
  step, setup, layout, mesh, vgg_graphdef = make_step(config)
  vgg_params = None
  if vgg_graphdef is not None:  # random frozen weights: the speed is the same
    state = nnx.state(VGG16Features(rngs=nnx.Rngs(0)))
    vgg_params = jax.device_put(nnx.to_pure_dict(state),
                                sharding.replicated(mesh))
  params = setup.init_params()
  opt_state = setup.init_opt_state(params)
  batch = train_step.global_batch(random_batch(config, layout), mesh, config)
  args = (params, opt_state, vgg_params, batch, np.int32(0),
          jax.random.key(0))
  return step, args, layout, mesh


def abstract_args(config, batch_per_task: int):
  """(jitted step, arguments as ShapeDtypeStructs, layout, mesh): nothing is
  initialised, for compiling alone."""
  _set_batch(config, batch_per_task)
  step, setup, layout, mesh, vgg_graphdef = make_step(config)
  shape = lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype)  # noqa: E731
  params = jax.tree.map(shape, setup.abstract_params)
  opt = jax.eval_shape(setup.init_opt_state, setup.abstract_params)
  vgg = None
  if vgg_graphdef is not None:
    vgg = jax.tree.map(shape, nnx.to_pure_dict(nnx.state(nnx.eval_shape(
        lambda: VGG16Features(rngs=nnx.Rngs(0))))))
  batch = jax.tree.map(shape, random_batch(config, layout))
  args = (params, jax.tree.map(shape, opt), vgg, batch,
          jax.ShapeDtypeStruct((), np.int32), jax.random.key(0))
  return step, args, layout, mesh


def model_flops(config, args) -> dict:
  """Counted FLOPs of the same step without remat (the model's own work)."""
  cfg = ml_collections.ConfigDict(config.to_dict())
  cfg.model.remat = False
  step = make_step(cfg)[0]
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), args)
  return flops_lib.count_step_flops(step, abstract)


def define_flags(fv: flags.FlagValues, argv=None) -> None:
  """The benchmark's flags (``--config.*`` overrides looked up in ``argv``)."""
  cli_flags.DEFINE_config(fv, argv, default="paper", help_string="Config "
                          "whose train step is measured")
  flags.DEFINE_integer("batch_per_task", 1, "Examples per task in the batch.",
                       flag_values=fv)
  flags.DEFINE_integer("steps", 3, "Timed steps.", flag_values=fv)
  flags.DEFINE_integer("warmup", 1, "Untimed steps first.", flag_values=fv)
  flags.DEFINE_integer("matmul_size", 4096, "Side of the square matmul that "
                       "MFU is measured against.", flag_values=fv)
  flags.DEFINE_boolean("count", True, "Count the jaxpr's FLOPs (--nocount "
                       "skips it: it traces the step again).", flag_values=fv)
  flags.DEFINE_boolean("compile_only", False, "Lower and compile from "
                       "abstract arguments, print time and memory, stop.",
                       flag_values=fv)
  flags.DEFINE_string("profile", "", "Directory: trace two steps and print "
                      "where the time goes.", flag_values=fv)


def main(argv, fv: flags.FlagValues) -> None:
  """Runs the benchmark with the parsed flags ``fv``."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  a = fv
  # A copy: the flag's config is locked and the benchmark sets a few fields.
  config = fv.config.copy_and_resolve_references()
  spec = fv["config"].config_filename
  overrides = fv["config"].override_values
  if config.loss.perceptual or config.loss.style:
    config.loss.vgg_weights = "random"  # only checked for being set
  t = time.perf_counter()
  if a.compile_only:
    step, args, layout, mesh = abstract_args(config, a.batch_per_task)
  else:
    step, args, layout, mesh = build(config, a.batch_per_task)
    jax.block_until_ready(args[:2])
  init_s = time.perf_counter() - t

  with jax.set_mesh(mesh):
    t = time.perf_counter()
    lowered = step.lower(*args)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    xla_flops = float(cost.get("flops", float("nan")))
    mem = compiled.memory_analysis()
    need = (mem.argument_size_in_bytes + mem.output_size_in_bytes
            - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    print(f"compiled in {compile_s:.1f} s (lowering {lower_s:.1f} s); XLA "
          f"memory estimate {need / 2**30:.2f} GiB", file=sys.stderr,
          flush=True)
    if a.compile_only:
      print(json.dumps({
          "benchmark": "train_step_compile", "config": spec,
          "overrides": overrides, "batch": layout.batch_size,
          "lower_s": round(lower_s, 2), "compile_s": round(compile_s, 2),
          "memory_estimate_bytes": need, "jax": jax.__version__,
          "date": time.strftime("%Y-%m-%d %H:%M")}), flush=True)
      return
    avail = _available_bytes()
    if avail and need > 0.95 * avail:
      raise SystemExit(
          f"the step needs about {need / 2**30:.1f} GiB (XLA's memory "
          f"analysis) but {avail / 2**30:.1f} GiB are available; try "
          "--config.model.remat=true or a smaller --batch_per_task")

    state = args
    times, cpu_s = [], 0.0
    for i in range(a.warmup + a.steps):
      r, t = _cpu_seconds(), time.perf_counter()
      params, opt, m = compiled(*state)
      jax.block_until_ready((params, opt, m))
      if i >= a.warmup:
        times.append(time.perf_counter() - t)
        cpu_s += _cpu_seconds() - r
      state = (params, opt) + state[2:]
    loss = float(m["loss"])
    profile = None
    if a.profile:
      from benchmarks import profile_summary  # pylint: disable=g-import-not-at-top
      profile = profile_summary.profile(compiled, state, a.profile,
                                        hlo_text=compiled.as_text())

  counted = model = None
  if a.count:
    counted = flops_lib.count_step_flops(step, args)
    model = (model_flops(config, args) if config.model.remat else counted)
  dtype = jnp.dtype(config.model.dtype)
  peak = matmul_peak(a.matmul_size, dtype)
  med = statistics.median(times)
  # MFU counts the model's FLOPs; without the count, XLA's figure.
  achieved = (model["total"] if model else xla_flops) / med
  out = {
      "benchmark": "train_step", "config": spec, "overrides": overrides,
      "dtype": str(dtype), "image_size": config.data.image_size,
      "batch": layout.batch_size, "remat": bool(config.model.remat),
      "vgg_loss": bool(config.loss.perceptual or config.loss.style),
      "init_s": round(init_s, 2), "lower_s": round(lower_s, 2),
      "compile_s": round(compile_s, 2),
      "step_s_median": round(med, 3), "step_s_all": [round(x, 3) for x in times],
      "images_per_s": round(layout.batch_size / med, 3),
      # Busy CPUs of the timed steps: process CPU time / wall time (on a
      # CPU backend, how many of the cores the step keeps busy).
      "cpu_busy": round(cpu_s / sum(times), 2),
      "flops_xla": xla_flops,
      # Executed matmul/conv FLOPs (remat recomputation included), and the
      # same counted with loop bodies once: XLA's cost analysis counts a
      # while loop's body once, so that is the figure to compare it with.
      "flops_counted": counted["total"] if counted else None,
      "flops_counted_loops_once": (counted["total_loops_once"] if counted
                                   else None),
      "flops_counted_by_kind": counted["by_kind"] if counted else None,
      # The model's FLOPs (no recomputation): what MFU is measured with.
      "model_flops": model["total"] if model else None,
      "model_flops_by_kind": model["by_kind"] if model else None,
      "achieved_flops_per_s": achieved,
      "matmul_size": a.matmul_size, "matmul_flops_per_s": peak,
      "mfu_vs_matmul": round(achieved / peak, 4),
      "memory_bytes": {
          "arguments": mem.argument_size_in_bytes,
          "outputs": mem.output_size_in_bytes,
          "aliased": mem.alias_size_in_bytes,
          "temporaries": mem.temp_size_in_bytes,
          "generated_code": mem.generated_code_size_in_bytes,
          "peak_estimate": (mem.argument_size_in_bytes
                            + mem.output_size_in_bytes
                            - mem.alias_size_in_bytes
                            + mem.temp_size_in_bytes),
      },
      "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                       * 1024,
      "loss": loss,
      "profile": profile,
      "device": str(jax.devices()[0].device_kind),
      "num_cpus": len(__import__("os").sched_getaffinity(0)),
      "platform": platform.processor() or platform.machine(),
      "jax": jax.__version__,
      "date": time.strftime("%Y-%m-%d %H:%M"),
  }
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  cli_flags.run("benchmarks/train_step.py", __doc__, define_flags, main)
