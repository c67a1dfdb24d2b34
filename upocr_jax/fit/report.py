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

import dataclasses
import json
import math
import re
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from input_pipeline.layout import BatchLayout
from upocr_jax import config_checks
from upocr_jax import sharding
from upocr_jax.fit import gpus
from upocr_jax.fit import hlo
from upocr_jax.fit import topologies
from upocr_jax.models import VGG16Features
from upocr_jax.tasks import TASK_KEYS
from upocr_jax.train import optim
from upocr_jax.train import train_step

# Stands in for config.loss.vgg_weights: the VGG16 of the perceptual / style
# losses is built abstractly; its weights do not change the compiled step.
_ABSTRACT_VGG = "<abstract VGG16: shapes only>"


@dataclasses.dataclass
class Target:
  """Where to compile: devices and per-device hardware figures (None when
  unknown, e.g. CPU)."""
  name: str
  devices: list
  hbm_bytes: float | None = None
  peak_flops: float | None = None
  hbm_bandwidth: float | None = None
  compiler_options: dict[str, Any] | None = None  # XLA options per compile


def check_topology(topology: str) -> None:
  """Raises ValueError (one line listing the known TPU slices and GPUs)
  unless ``topology`` is one of them."""
  if topology in gpus.KNOWN:
    return
  try:
    topologies.get(topology)
  except ValueError:
    raise ValueError(
        f"--topology {topology!r} is not a known TPU topology or GPU; known "
        f"TPU slices: {', '.join(topologies.KNOWN)}; known GPUs: "
        f"{', '.join(gpus.KNOWN)}") from None


def target_for(topology: str) -> Target:
  """The compile-only devices of a known TPU topology or GPU, or ('') the
  local devices (HBM from the device's memory stats where it reports
  them)."""
  if topology in gpus.KNOWN:
    g = gpus.get(topology)
    return Target(g.name, gpus.devices(g), g.hbm_bytes, g.peak_bf16_flops,
                  g.hbm_bandwidth, gpus.COMPILER_OPTIONS)
  if topology:
    t = topologies.get(topology)
    g = t.generation
    return Target(t.name, topologies.devices(t), g.hbm_bytes,
                  g.peak_bf16_flops, g.hbm_bandwidth)
  devs = jax.devices()
  stats = devs[0].memory_stats() or {}
  return Target(f"local {devs[0].platform} x{len(devs)}", devs,
                stats.get("bytes_limit"))


def _prepared(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(config.to_dict())
  if (config.loss.perceptual or config.loss.style) and \
      not config.loss.vgg_weights:
    config.loss.vgg_weights = _ABSTRACT_VGG
  return config


def _sds(tree, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                        sharding=s),
                      tree, shardings)


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
    vgg = _sds(state, jax.tree.map(lambda _: repl, state))
  step_fn = train_step.make_train_step(
      config, setup, tx, optim.make_schedule(config.optim, n_sched), layout,
      mesh, vgg_graphdef)
  params = setup.abstract_params
  opt = _sds(jax.eval_shape(tx.init, params), setup.opt_shardings)
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


# The TPU compiler refuses a program that does not fit in HBM instead of
# returning its memory analysis. It words the refusal in one of two ways:
# temporaries alone over the HBM it can use, or the whole program's usage
# over it, itemised.
_SIZE = r"([\d.]+)([KMGT]?)"
_TEMPS_OVER = re.compile(r"memory required for HLO temporaries \(" + _SIZE
                         + r"\) exceeds available HBM \(" + _SIZE + r"\)")
_USAGE_OVER = re.compile(r"Used [\d.]+[KMGT]? of " + _SIZE + r" hbm\. "
                         r"Exceeded hbm capacity by " + _SIZE)
_ITEM = {"temporaries": re.compile(r"HLO temp\s+" + _SIZE),
         "arguments": re.compile(r"\n\s*arguments\s+" + _SIZE),
         "total": re.compile(r"Total hbm usage >= " + _SIZE)}
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _bytes(m: re.Match[str], i: int = 1) -> float:
  return float(m.group(i)) * _UNITS[m.group(i + 1)]


def _refusal(text: str) -> tuple[dict[str, float | None], float, float,
                                 str] | None:
  """(per-device bytes, usable HBM, margin, the compiler's sentence) of a
  refusal for lack of HBM, or None when ``text`` is not one."""
  m = _TEMPS_OVER.search(text)
  if m is not None:
    temps, hbm = _bytes(m, 1), _bytes(m, 3)
    return ({"arguments": None, "temporaries": temps,
             "outputs_not_aliased": None, "total": None},
            hbm, hbm - temps, m.group(0))
  m = _USAGE_OVER.search(text)
  if m is None:
    return None
  items = {k: (None if (i := r.search(text)) is None else _bytes(i))
           for k, r in _ITEM.items()}
  return ({"arguments": items["arguments"], "temporaries": items["temporaries"],
           "outputs_not_aliased": None, "total": items["total"]},
          _bytes(m, 1), -_bytes(m, 3), m.group(0))


def _out_of_hbm(config: ml_collections.ConfigDict, target: Target,
                error: Exception, seconds: float) -> dict[str, Any] | None:
  """The report of a step the compiler refused for lack of HBM, or None when
  ``error`` is something else."""
  refusal = _refusal(str(error))
  if refusal is None:
    return None
  per_device, hbm, margin, sentence = refusal
  n = len(target.devices)
  return {
      "target": target.name, "devices": n,
      "mesh": dict(zip(config.mesh.axes, sharding.mesh_shape(config, n))),
      "batch": sum(config.data[k].batch_size for k in TASK_KEYS),
      "dtype": config.model.dtype, "remat": bool(config.model.remat),
      "remat_policy": config.model.get("remat_policy", "full"),
      "lower_s": None, "compile_s": round(seconds, 1),
      "per_device_bytes": per_device,
      # The compiler's own figure: the HBM it can use (a little under the
      # chip's nominal size).
      "hbm_bytes": hbm, "fits": False, "margin_bytes": margin,
      "compiler_error": sentence,
  }


def fit_report(config: ml_collections.ConfigDict, target: Target
               ) -> dict[str, Any]:
  """Compiles the train step for ``target``; returns the report's figures."""
  start = time.perf_counter()
  try:
    compiled, mesh, lower_s, compile_s = compile_train_step(
        config, target.devices, target.compiler_options)
  except jax.errors.JaxRuntimeError as e:
    refused = _out_of_hbm(config, target, e, time.perf_counter() - start)
    if refused is None:
      raise
    return refused
  n = len(target.devices)
  mem = compiled.memory_analysis()
  args = mem.argument_size_in_bytes
  temps = mem.temp_size_in_bytes
  outs = mem.output_size_in_bytes - mem.alias_size_in_bytes
  total = args + temps + outs
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  program = hlo.parse(compiled.as_text())
  if cost:
    corr = hlo.loop_correction(program)
    xla_flops = float(cost.get("flops", 0.0))
    xla_bytes = float(cost.get("bytes accessed", 0.0))
  else:  # no cost analysis (compile-only GPU): all of it from the HLO
    corr = hlo.program_costs(program)
    xla_flops = xla_bytes = 0.0
  flops = xla_flops + corr["flops"]
  nbytes = xla_bytes + corr["bytes"]
  out: dict[str, Any] = {
      "target": target.name, "devices": n, "mesh": dict(mesh.shape),
      "batch": sum(config.data[k].batch_size for k in TASK_KEYS),
      "dtype": config.model.dtype, "remat": bool(config.model.remat),
      "remat_policy": config.model.get("remat_policy", "full"),
      "lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1),
      "per_device_bytes": {"arguments": args, "temporaries": temps,
                           "outputs_not_aliased": outs, "total": total},
      "hbm_bytes": target.hbm_bytes,
      "fits": None if target.hbm_bytes is None else total <= target.hbm_bytes,
      "margin_bytes": (None if target.hbm_bytes is None
                       else target.hbm_bytes - total),
      "collectives": hlo.collectives(program, n),
      "xla_flops": xla_flops if cost else None,
      "xla_bytes_accessed": xla_bytes if cost else None,
      "loop_correction": corr if cost else None,
      "flops": flops, "bytes_accessed": nbytes,
      "costs_from": "xla+loop_correction" if cost else "hlo_count",
      "scanned_loops": sum(i.op == "while" for body in program.comps.values()
                           for i in body),
  }
  if target.peak_flops and target.hbm_bandwidth:
    out["roofline_estimate_s"] = max(flops / target.peak_flops,
                                     nbytes / target.hbm_bandwidth)
  return out


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


def _gib(x: float | None) -> str:
  return "n/a" if x is None else f"{x / 2**30:.2f} GiB"


def _over(x: float) -> str:
  # A refusal can be by a few MiB, which two decimals of GiB would hide.
  return _gib(x) if x >= 2**30 else f"{x / 2**20:.2f} MiB"


def format_report(r: dict[str, Any], config: ml_collections.ConfigDict
                  ) -> str:
  """The readable table of a :func:`fit_report`."""
  head = (f"train step on {r['target']}: {r['devices']} devices, mesh "
          f"{r['mesh']}, global batch {r['batch']}, dtype {r['dtype']}, remat "
          f"{r['remat']}" + (f" ({r['remat_policy']})" if r["remat"] else ""))
  if "compiler_error" in r:
    return "\n".join([
        f"{head} (refused by the compiler after {r['compile_s']} s)",
        f"  temporaries          {_gib(r['per_device_bytes']['temporaries'])}"
        f"   HBM {_gib(r['hbm_bytes'])}   fits: NO, "
        f"{_over(-r['margin_bytes'])} over"
        + (" in temporaries alone" if r["per_device_bytes"]["total"] is None
           else f" (arguments {_gib(r['per_device_bytes']['arguments'])})"),
        f"  ({r['compiler_error']})",
        "knobs that would help: " + "; ".join(
            name for name, _ in knobs(config, r["devices"]))
        + " (--suggest tries them)"])
  m = r["per_device_bytes"]
  fits = ("n/a (unknown HBM)" if r["fits"] is None else
          f"yes, {_gib(r['margin_bytes'])} to spare" if r["fits"] else
          f"NO, {_gib(-r['margin_bytes'])} over")
  lines = [
      f"{head} (lowered {r['lower_s']} s, compiled {r['compile_s']} s)",
      "per device memory (XLA memory analysis):",
      f"  arguments            {_gib(m['arguments'])}",
      f"  temporaries          {_gib(m['temporaries'])}",
      f"  outputs (not alias.) {_gib(m['outputs_not_aliased'])}",
      f"  total                {_gib(m['total'])}   HBM "
      f"{_gib(r['hbm_bytes'])}   fits: {fits}",
      "collectives per step (per device):",
  ]
  for kind, c in r["collectives"].items():
    lines.append(f"  {kind:18s} {c['count']:6d} ops {c['arrays']:6d} arrays "
                 f"{c['bytes'] / 2**20:10.1f} MiB")
  if r["xla_flops"] is None:
    lines.append(
        f"FLOPs per device {r['flops']:.3e} (dots and convolutions counted "
        "from the HLO, every loop iteration; this compiler gives no cost "
        "analysis)")
    lines.append(f"bytes accessed   {r['bytes_accessed']:.3e} (counted from "
                 "the HLO)")
  else:
    lines.append(
        f"FLOPs per device {r['flops']:.3e} (XLA {r['xla_flops']:.3e} + "
        f"{r['loop_correction']['flops']:.3e} for the iterations of "
        f"{r['scanned_loops']} loops whose bodies XLA counts once)")
    lines.append(
        f"bytes accessed   {r['bytes_accessed']:.3e} (XLA "
        f"{r['xla_bytes_accessed']:.3e} + "
        f"{r['loop_correction']['bytes']:.3e})")
  if "roofline_estimate_s" in r:
    lines.append(f"ESTIMATED step time (roofline, max of FLOPs/peak and "
                 f"bytes/bandwidth; ignores collectives): "
                 f"{r['roofline_estimate_s'] * 1e3:.1f} ms")
  if r["fits"] is False:
    lines.append("does not fit; knobs that would help: " + "; ".join(
        name for name, _ in knobs(config, r["devices"]))
                 + " (--suggest tries them)")
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
