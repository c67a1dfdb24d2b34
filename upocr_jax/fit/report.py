"""``--compile_only``: compile the real train step and report whether it fits.

  python -m upocr_jax.main --config configs/upocr.py:paper --workdir /tmp/x \\
      --compile_only --topology=v5e:2x2 [--suggest]

With ``--topology`` the step is compiled by the TPU compiler for that slice
(compile-only devices from libtpu: any host, no TPU), or by the GPU compiler
for a known GPU, e.g. ``--topology=h100`` (the CUDA plugin, no GPU; see
``fit.gpus``); without it, for the local devices. Prints a readable table and
one JSON line:

* per device: arguments, temporaries, outputs not aliased to arguments, and
  their total against the HBM of the topology's chips (fits yes/no, margin);
* collectives per step by kind (ops, arrays, bytes; see ``fit.hlo``);
* XLA's FLOPs and bytes accessed (``cost_analysis``), with the iterations of
  scanned stages that it leaves out added back (``fit.hlo.loop_correction``);
  where the compiler gives none (compile-only GPU), both counted from the
  HLO (``fit.hlo.program_costs``);
* a roofline step-time ESTIMATE, max(FLOPs / peak, bytes / bandwidth) per
  chip: a lower bound, it ignores collectives, overlap and efficiency.

When the step does not fit, the report names the knobs that would help;
``--suggest`` compiles them in turn and reports the first that fits.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from input_pipeline.layout import BatchLayout
from upocr_jax import config_checks
from upocr_jax import sharding
from upocr_jax.fit import measure
from upocr_jax.fit.targets import Target, target_for
from upocr_jax.models import VGG16Features
from upocr_jax.tasks import TASK_KEYS
from upocr_jax.train import optim
from upocr_jax.train import train_step

# Stands in for config.loss.vgg_weights: the VGG16 of the perceptual / style
# losses is built abstractly; its weights do not change the compiled step.
_ABSTRACT_VGG = "<abstract VGG16: shapes only>"


def _prepared(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  if (config.loss.perceptual or config.loss.style) and \
      not config.loss.vgg_weights:
    config.loss.vgg_weights = _ABSTRACT_VGG
  return config


def compile_train_step(config: ml_collections.ConfigDict,
                       devices: Sequence[Any],
                       compiler_options: dict[str, Any] | None = None):
  """(compiled step, mesh, seconds to lower, seconds to compile) of the
  run's train step (as ``trainer.run`` builds it) for abstract, sharded
  arguments on ``devices``, with XLA ``compiler_options``."""
  config = _prepared(config)
  checked = config_checks.check_config(config, len(devices))
  shards = checked.num_data_shards
  mesh = sharding.make_mesh(config, devices)
  n_sched = checked.schedule_steps
  tx = optim.make_optimizer(config.optim, n_sched)
  setup = train_step.make_setup(config, mesh, tx)
  layout = BatchLayout.from_data_config(config.data, shards)
  repl = sharding.replicated(mesh)
  vgg_graphdef = vgg = None
  if config.loss.perceptual or config.loss.style:
    vgg_graphdef, state = nnx.split(nnx.eval_shape(
        lambda: VGG16Features(rngs=nnx.Rngs(0))))
    state = nnx.to_pure_dict(state)
    vgg = sharding.abstract(state, jax.tree.map(lambda _: repl, state))
  step_fn = train_step.make_train_step(
      config, setup, tx, optim.make_schedule(config.optim, n_sched), layout,
      mesh, vgg_graphdef)
  params = setup.abstract_params
  opt = sharding.abstract(jax.eval_shape(tx.init, params), setup.opt_shardings)
  s, b = config.data.image_size, layout.batch_size
  shapes = {"image": ((b, s, s, 3), jnp.uint8),
            "target": ((b, s, s, 3), jnp.uint8),
            "valid": ((b, s, s), jnp.bool_),
            "text_mask": ((b, s, s, 1), jnp.uint8),
            "task_id": ((b,), jnp.int32)}
  batch = {k: jax.ShapeDtypeStruct(
      sh, dt, sharding=sharding.batch_sharding(mesh, config, len(sh)))
           for k, (sh, dt) in shapes.items()}
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
  with sharding.mesh_context(mesh, sharding.activation_rules(config)):
    t = time.perf_counter()
    lowered = step_fn.lower(params, opt, vgg, batch, step, key)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile(compiler_options)
  return compiled, mesh, lower_s, time.perf_counter() - t


def _case(config: ml_collections.ConfigDict, target: Target,
          mesh_shape: dict[str, int]) -> dict[str, Any]:
  """What was compiled: the head of a report."""
  return {
      "target": target.name, "devices": len(target.devices),
      "mesh": mesh_shape,
      "batch": sum(config.data[k].batch_size for k in TASK_KEYS),
      "dtype": config.model.dtype, "remat": bool(config.model.remat),
      "remat_policy": config.model.get("remat_policy", "full")}


def fit_report(config: ml_collections.ConfigDict, target: Target
               ) -> dict[str, Any]:
  """Compiles the train step for ``target``; returns the report's figures
  (see ``fit.measure``; a refusal for lack of HBM is a report too)."""
  start = time.perf_counter()
  try:
    compiled, mesh, lower_s, compile_s = compile_train_step(
        config, target.devices, target.compiler_options)
  except jax.errors.JaxRuntimeError as e:
    refused = measure.refusal(e, time.perf_counter() - start)
    if refused is None:
      raise
    n = len(target.devices)
    mesh_shape = dict(zip(config.mesh.axes, sharding.mesh_shape(config, n)))
    return {**_case(config, target, mesh_shape), **refused}
  return {**_case(config, target, dict(mesh.shape)),
          "lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1),
          **measure.measure(compiled, target)}


def knobs(config: ml_collections.ConfigDict, num_devices: int
          ) -> list[tuple[str, dict[str, Any]]]:
  """Changes that lower per-device memory, most specific first:
  (description, {dotted config field: value})."""
  out = []
  # Remat keeping the linears' outputs first (less recomputation), then
  # keeping only each block's input (least memory).
  if not config.model.remat:
    out.append(("remat, policy dots (model.remat=True, "
                "model.remat_policy=dots)",
                {"model.remat": True, "model.remat_policy": "dots"}))
  if not config.model.remat or config.model.get("remat_policy") != "full":
    out.append(("remat, policy full (model.remat=True, "
                "model.remat_policy=full)",
                {"model.remat": True, "model.remat_policy": "full"}))
  shape = sharding.mesh_shape(config, num_devices)
  fsdp = dict(zip(config.mesh.axes, shape)).get("fsdp", 1)
  if "fsdp" in config.mesh.axes and fsdp < num_devices:
    fsdp_shape = tuple(num_devices if a == "fsdp" else 1
                       for a in config.mesh.axes)
    out.append((f"FSDP over {num_devices} chips (mesh.shape={fsdp_shape})",
                {"mesh.shape": fsdp_shape}))
  per_task = [config.data[k].batch_size for k in TASK_KEYS]
  shards = math.prod(dict(zip(config.mesh.axes, shape)).get(a, 1)
                     for a in config.sharding.batch_axes)
  if all(b // 2 >= shards and (b // 2) % shards == 0 for b in per_task):
    out.append(("half the per-chip batch (data.<task>.batch_size / 2)",
                {f"data.{k}.batch_size": b // 2
                 for k, b in zip(TASK_KEYS, per_task)}))
  return out


def with_changes(config: ml_collections.ConfigDict, changes: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with dotted fields replaced."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in changes.items():
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def suggest(config: ml_collections.ConfigDict, target: Target
            ) -> dict[str, Any] | None:
  """Compiles the knobs in turn, cumulatively; the first report that fits
  (with ``suggestion`` naming the changes), or None."""
  applied: dict[str, Any] = {}
  names = []
  for name, changes in knobs(config, len(target.devices)):
    applied.update(changes)
    names.append(name)
    report = fit_report(with_changes(config, applied), target)
    if report["fits"]:
      report["suggestion"] = {"knobs": names, "config": applied}
      return report
  return None


def format_report(r: dict[str, Any], config: ml_collections.ConfigDict
                  ) -> str:
  """The readable table of a :func:`fit_report`."""
  head = (f"train step on {r['target']}: {r['devices']} devices, mesh "
          f"{r['mesh']}, global batch {r['batch']}, dtype {r['dtype']}, remat "
          f"{r['remat']}" + (f" ({r['remat_policy']})" if r["remat"] else ""))
  help_ = "; ".join(name for name, _ in knobs(config, r["devices"]))
  if "compiler_error" in r:
    return "\n".join(
        [f"{head} (refused by the compiler after {r['compile_s']} s)"]
        + measure.refusal_lines(r)
        + [f"knobs that would help: {help_} (--suggest tries them)"])
  lines = [f"{head} (lowered {r['lower_s']} s, compiled {r['compile_s']} s)"]
  lines += measure.memory_lines(r)
  lines.append("collectives per step (per device):")
  for kind, c in r["collectives"].items():
    lines.append(f"  {kind:18s} {c['count']:6d} ops {c['arrays']:6d} arrays "
                 f"{c['bytes'] / 2**20:10.1f} MiB")
  lines += measure.cost_lines(r)
  if "roofline_estimate_s" in r:
    lines.append(f"ESTIMATED step time (roofline, max of FLOPs/peak and "
                 f"bytes/bandwidth; ignores collectives): "
                 f"{r['roofline_estimate_s'] * 1e3:.1f} ms")
  if r["fits"] is False:
    lines.append(f"does not fit; knobs that would help: {help_} "
                 "(--suggest tries them)")
  if "suggestion" in r:
    lines.append("fits with: " + " + ".join(r["suggestion"]["knobs"]))
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, topology: str = "",
        try_knobs: bool = False) -> dict[str, Any]:
  """``--compile_only``: prints the table and one JSON line; returns the
  report (with ``suggested``: the first fitting variant, when asked)."""
  target = target_for(topology)
  report = fit_report(config, target)
  print(format_report(report, config), flush=True)
  if try_knobs and report["fits"] is False:
    found = suggest(config, target)
    report["suggested"] = found
    if found is None:
      print("--suggest: no combination of " + ", ".join(
          n for n, _ in knobs(config, len(target.devices))) + " fits",
            flush=True)
    else:
      print(format_report(found, config), flush=True)
  print(json.dumps({"compile_only": report}, default=str), flush=True)
  return report
