"""Per-device memory and collectives of the train step on data/FSDP/tensor.

Usage: python benchmarks/scaling.py [--config=CONFIG] [--meshes=D,F,T ...]
    [--devices=N] [--config.FIELD=VALUE ...] [flags]

Examples:
  python benchmarks/scaling.py                       # the default mesh list
  python benchmarks/scaling.py --meshes=1,8,1 --meshes=2,2,2 --devices=8 --table

Runs on fake CPU devices (``--xla_force_host_platform_device_count``; the count
is the largest mesh's, or ``--devices``). Nothing is allocated or executed: the
state is abstract (``ShapeDtypeStruct`` with the run's ``NamedSharding``) and
the train step of ``upocr_jax.train.train_step`` is only lowered and compiled.

Per mesh (data, fsdp, tensor) it reports

* ``params_bytes`` / ``opt_bytes``: the largest per-device share of the
  parameters and of the optimizer state, exact, from the shardings of the
  ``--config`` model (default: the paper's), and their ratio to the unsharded
  totals;
* ``collectives``: for the compiled train step's optimized HLO, the number of
  all-reduce, all-gather, reduce-scatter, all-to-all and collective-permute ops
  executed per step (ops in a while loop count once per iteration) and their
  per-device buffer bytes (the larger of operand and result: the size of the
  tensor being reduced / gathered / exchanged) plus an estimate of the bytes
  each device sends with ring algorithms (``wire_bytes``);
* ``memory_analysis``: XLA's argument / output / temp / alias bytes per device
  of the compiled step.

Compiling the full paper train step takes minutes per mesh on a small CPU
machine, so by default the compiled columns (collectives, memory analysis)
come from a reduced model: the paper's widths, heads, windows, losses (with an
abstract VGG16) and batch (16 per task, raised to a multiple of the
data-parallel size if needed), with 2 blocks per stage at 256x256
(``--hlo_depths``, ``--hlo_size``; ``--hlo_depths=full --hlo_size=0`` compiles
the paper config itself). Every JSON line names both configs. The CPU code is
generated with cheap LLVM settings (``FAST_CODEGEN``; ``--full_codegen``
turns them off), which do not change the HLO.

One JSON line per mesh, then (``--table``) a markdown table;
``--from_jsonl=FILE`` prints the table of earlier JSON lines.
"""

from __future__ import annotations

import math
import os
import sys

from absl import flags


def _force_host_devices(argv: list[str]) -> None:
  """Sets the fake CPU device count; works only before jax is imported."""
  fv = flags.FlagValues()
  _define_device_flags(fv)
  fv(argv, known_only=True)
  n = fv.devices or max(math.prod(_parse_mesh(m)) for m in fv.meshes or
                        DEFAULT_MESHES)
  xla_flags = os.environ.get("XLA_FLAGS", "")
  os.environ["XLA_FLAGS"] = (
      f"{xla_flags} --xla_force_host_platform_device_count={n}").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _define_device_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_multi_string("meshes", None, "Mesh shape DATA,FSDP,TENSOR (default "
                            "list: " + " ".join(DEFAULT_MESHES) + ")",
                            flag_values=fv)
  flags.DEFINE_integer("devices", None, "Fake CPU devices (default: the "
                       "largest mesh's size).", flag_values=fv)


def _parse_mesh(spec: str) -> tuple[int, int, int]:
  shape = tuple(int(s) for s in spec.replace("x", ",").split(","))
  if len(shape) != 3 or min(shape) < 1:
    raise SystemExit(f"--meshes {spec}: expected DATA,FSDP,TENSOR, e.g. 1,8,1")
  return shape


DEFAULT_MESHES = ("2,1,1", "4,1,1", "8,1,1", "1,2,1", "1,4,1", "1,8,1",
                  "1,1,2", "1,1,4", "1,1,8", "2,2,2", "2,4,1")

if __name__ == "__main__":
  _force_host_devices(sys.argv)
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
      __file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import collections  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402
from flax import nnx  # noqa: E402

from benchmarks import hlo  # noqa: E402
from input_pipeline.layout import BatchLayout  # noqa: E402
from upocr_jax import config_checks  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax import sharding  # noqa: E402
from upocr_jax.tasks import TASK_KEYS  # noqa: E402
from upocr_jax.train import optim  # noqa: E402
from upocr_jax.train import train_step  # noqa: E402
from upocr_jax.models import VGG16Features  # noqa: E402

# Cheaper LLVM code generation for the CPU executable (the step never runs).
# The optimized HLO (SPMD partitioning, collectives, buffer assignment) is
# decided before the backend and is the same with or without them; compiling
# takes about half the time.
FAST_CODEGEN = {"xla_backend_optimization_level": 0,
                "xla_llvm_disable_expensive_passes": True}
# A placeholder so that the config validates: the VGG16 of the perceptual and
# style losses is built abstractly (random, never materialised); its weights
# do not change the shapes of the compiled step.
_ABSTRACT_VGG = "<abstract VGG16: shapes only>"


# ----------------------------------------------------------------- memory ---

def _device_bytes(tree: Any) -> dict[Any, int]:
  """Bytes each device holds of a tree of sharded ShapeDtypeStructs."""
  out: dict[Any, int] = collections.defaultdict(int)
  for x in jax.tree.leaves(tree):
    item = np.dtype(x.dtype).itemsize
    for dev, idx in x.sharding.devices_indices_map(x.shape).items():
      n = 1
      for sl, dim in zip(idx, x.shape):
        start, stop, _ = sl.indices(dim)
        n *= stop - start
      out[dev] += n * item
  return dict(out)


def _total_bytes(tree: Any) -> int:
  return sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _with_shardings(abstract: Any, shardings: Any) -> Any:
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract, shardings)


@contextlib.contextmanager
def _abstract_models_cached():
  """Builds each model structure once for all meshes.

  ``nnx.eval_shape`` of the paper model takes 10-20 s on a small CPU and does
  not depend on the mesh; ``train_step.make_setup`` calls
  ``train_step.abstract_model`` for every mesh, so it is memoised (by
  ``config.model``) while the benchmark runs.
  """
  orig = getattr(train_step, "abstract_model", None)
  if orig is None:  # the library changed: nothing to cache, still correct
    yield
    return
  cache: dict[str, Any] = {}

  def cached(config):
    key = config.model.to_json()
    if key not in cache:
      cache[key] = orig(config)
    return cache[key]

  train_step.abstract_model = cached
  try:
    yield
  finally:
    train_step.abstract_model = orig


def _replication_notes(config: ml_collections.ConfigDict, mesh) -> list[str]:
  """Parameters that stay replicated along an axis (dimension not divisible).

  The same notes that ``sharding.state_shardings`` logs, collected here
  instead of from the log.
  """
  _, abstract = train_step.abstract_model(config)
  rules = sharding._rules(config)  # pylint: disable=protected-access
  notes: list[str] = []

  def one(path, var):
    meta = var.get_metadata() if isinstance(var, nnx.Variable) else {}
    axes = meta.get("logical_axes") or (None,) * len(var.shape)
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    sharding.logical_to_spec(axes, var.shape, mesh, rules, name, notes)

  jax.tree_util.tree_map_with_path(
      one, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return sorted(set(notes))


# ------------------------------------------------------------- the bench ---

def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config ``spec`` names (e.g. 'tiny', see upocr_jax.cli_flags) with the
  abstract VGG placeholder."""
  return with_abstract_vgg(cli_flags.load_config(spec))


def with_abstract_vgg(config: ml_collections.ConfigDict
                      ) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose VGG loss weights are the abstract placeholder."""
  config = config.copy_and_resolve_references()
  if config.loss.perceptual or config.loss.style:
    config.loss.vgg_weights = _ABSTRACT_VGG
  return config


def reduced_config(config: ml_collections.ConfigDict,
                   depths: tuple[Sequence[int], Sequence[int]] | None,
                   size: int | None) -> ml_collections.ConfigDict:
  """The config with other block counts and/or image size (widths kept)."""
  c = copy.deepcopy(config)
  if depths is not None:
    c.model.encoder.depths, c.model.decoder.depths = (tuple(d) for d in depths)
  if size is not None:
    c.data.image_size = size
  return c


def _fit_batch(config: ml_collections.ConfigDict, shards: int) -> None:
  """Raises a per-task batch that the data-parallel size does not divide."""
  for key in TASK_KEYS:
    b = config.data[key].batch_size
    if b % shards:
      config.data[key].batch_size = shards * -(-b // shards)


def _describe(config: ml_collections.ConfigDict) -> dict[str, Any]:
  m = config.model
  return {"variant": config.variant, "image_size": config.data.image_size,
          "encoder_depths": list(m.encoder.depths),
          "decoder_depths": list(m.decoder.depths), "dtype": m.dtype,
          "batch_per_task": [config.data[k].batch_size
                             for k in TASK_KEYS]}


@dataclasses.dataclass
class _Built:
  mesh: Any
  setup: Any
  tx: Any
  shards: int


def _build(config: ml_collections.ConfigDict, shape: Sequence[int],
           devices: Sequence[jax.Device]) -> tuple[ml_collections.ConfigDict,
                                                   _Built]:
  """Config for this mesh (batch fitted, validated) and its train setup."""
  config = copy.deepcopy(config)
  config.mesh.shape = tuple(shape)
  devices = list(devices)[:math.prod(shape)]
  mesh = sharding.make_mesh(config, devices)
  _fit_batch(config, sharding.num_batch_shards(mesh, config))
  checked = config_checks.check_config(config, len(devices))
  shards = checked.num_data_shards
  tx = optim.make_optimizer(config.optim, checked.schedule_steps)
  return config, _Built(mesh, train_step.make_setup(config, mesh, tx), tx,
                        shards)


def memory_figures(config: ml_collections.ConfigDict, shape: Sequence[int],
                   devices: Sequence[jax.Device]) -> dict[str, Any]:
  """Per-device parameter and optimizer bytes of ``config`` on a mesh."""
  config, b = _build(config, shape, devices)
  params = b.setup.abstract_params
  opt = _with_shardings(jax.eval_shape(b.tx.init, params),
                        b.setup.opt_shardings)
  out: dict[str, Any] = {
      "memory_config": _describe(config),
      "num_params": sum(math.prod(x.shape) for x in jax.tree.leaves(params))}
  for name, tree in (("params", params), ("opt", opt)):
    total = _total_bytes(tree)
    per_dev = max(_device_bytes(tree).values())
    out[f"{name}_bytes_total"] = total
    out[f"{name}_bytes_per_device"] = per_dev
    out[f"{name}_ratio"] = round(per_dev / total, 4)
  out["replicated_notes"] = _replication_notes(config, b.mesh)
  return out


def lower_train_step(config: ml_collections.ConfigDict, shape: Sequence[int],
                     devices: Sequence[jax.Device]):
  """The run's train step lowered for abstract, sharded arguments.

  Uses ``train_step.make_setup`` / ``make_train_step`` as ``trainer.run`` does;
  the perceptual / style VGG16, when on, is abstract and replicated.

  Returns:
    (lowered, config with the fitted batch, mesh, lowering seconds, bytes of
    the model's parameters).
  """
  config, b = _build(config, shape, devices)
  mesh, setup = b.mesh, b.setup
  n_sched = config_checks.schedule_steps(config)
  layout = BatchLayout.from_data_config(config.data, b.shards)
  vgg_graphdef = vgg_params = None
  if config.loss.perceptual or config.loss.style:
    vgg_graphdef, vgg_state = nnx.split(nnx.eval_shape(
        lambda: VGG16Features(rngs=nnx.Rngs(0))))
    vgg_state = nnx.to_pure_dict(vgg_state)
    vgg_params = _with_shardings(vgg_state, jax.tree.map(
        lambda _: sharding.replicated(mesh), vgg_state))
  step_fn = train_step.make_train_step(
      config, setup, b.tx, optim.make_schedule(config.optim, n_sched), layout,
      mesh, vgg_graphdef)
  params = setup.abstract_params
  opt = _with_shardings(jax.eval_shape(b.tx.init, params), setup.opt_shardings)
  s, bsz = config.data.image_size, layout.batch_size
  shapes = {"image": ((bsz, s, s, 3), jnp.uint8),
            "target": ((bsz, s, s, 3), jnp.uint8),
            "valid": ((bsz, s, s), jnp.bool_),
            "text_mask": ((bsz, s, s, 1), jnp.uint8),
            "task_id": ((bsz,), jnp.int32)}
  batch = {k: jax.ShapeDtypeStruct(
      sh, dt, sharding=sharding.batch_sharding(mesh, config, len(sh)))
           for k, (sh, dt) in shapes.items()}
  repl = sharding.replicated(mesh)
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=repl)
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=repl)
  t = time.perf_counter()
  # As trainer.run traces it: the model pins its activations' batch dimension.
  with sharding.mesh_context(mesh, sharding.activation_rules(config)):
    lowered = step_fn.lower(params, opt, vgg_params, batch, step, key)
  return (lowered, config, mesh, time.perf_counter() - t,
          _total_bytes(params))


def compiled_figures(config: ml_collections.ConfigDict, shape: Sequence[int],
                     devices: Sequence[jax.Device],
                     fast_codegen: bool = True,
                     dump_dir: str | None = None) -> dict[str, Any]:
  """Collectives and XLA memory analysis of the compiled train step.

  Args:
    config: the model / data / loss / optimizer config to compile.
    shape: (data, fsdp, tensor) mesh sizes.
    devices: at least prod(shape) devices; the first ones are used.
    fast_codegen: compile with ``FAST_CODEGEN`` (CPU backend options only).
    dump_dir: if set, the optimized HLO is written there as
      ``train_step_D_F_T.hlo.txt``.
  """
  lowered, config, mesh, lower_s, param_bytes = lower_train_step(
      config, shape, devices)
  t = time.perf_counter()
  with sharding.mesh_context(mesh, sharding.activation_rules(config)):
    compiled = lowered.compile(
        FAST_CODEGEN if fast_codegen and mesh.devices.flat[0].platform == "cpu"
        else None)
  compile_s = time.perf_counter() - t
  text = compiled.as_text()
  if dump_dir:
    os.makedirs(dump_dir, exist_ok=True)
    name = "_".join(str(n) for n in shape)
    with open(os.path.join(dump_dir, f"train_step_{name}.hlo.txt"), "w") as f:
      f.write(text)
  out: dict[str, Any] = {
      "hlo_config": {**_describe(config), "params_bytes_total": param_bytes},
      "lower_s": round(lower_s, 1),
      "compile_s": round(compile_s, 1),
      "collectives": hlo.parse_collectives(text, math.prod(shape))}
  try:
    ma = compiled.memory_analysis()
    out["memory_analysis"] = {
        k: int(getattr(ma, f"{k}_size_in_bytes"))
        for k in ("argument", "output", "temp", "alias")}
  except (AttributeError, NotImplementedError, TypeError):
    out["memory_analysis"] = None   # not every backend reports it
  return out


def run_mesh(mem_config: ml_collections.ConfigDict,
             hlo_config: ml_collections.ConfigDict | None,
             shape: Sequence[int], devices: Sequence[jax.Device],
             fast_codegen: bool = True,
             dump_dir: str | None = None) -> dict[str, Any]:
  """All figures for one mesh (hlo_config None: memory figures only)."""
  row: dict[str, Any] = {
      "benchmark": "scaling", "mesh": dict(zip(mem_config.mesh.axes, shape)),
      "num_devices": math.prod(shape)}
  row.update(memory_figures(mem_config, shape, devices))
  if hlo_config is not None:
    row.update(compiled_figures(hlo_config, shape, devices, fast_codegen,
                                dump_dir))
  row.update({
      "device": f"{jax.devices()[0].platform}: "
                f"{jax.devices()[0].device_kind} x {jax.device_count()} (fake "
                "host devices)" if jax.devices()[0].platform == "cpu" else
                jax.devices()[0].device_kind,
      "machine": f"{platform.processor() or platform.machine()}, "
                 f"{os.cpu_count()} CPUs",
      "jax": jax.__version__, "git": _git_revision(),
      "date": time.strftime("%Y-%m-%d")})
  return row


def run(mem_config: ml_collections.ConfigDict,
        hlo_config: ml_collections.ConfigDict | None,
        meshes: Sequence[Sequence[int]],
        devices: Sequence[jax.Device] | None = None,
        fast_codegen: bool = True, dump_dir: str | None = None):
  """Yields ``run_mesh``'s figures for each mesh (model structures built once).

  Args:
    mem_config: config of the memory figures (e.g. ``load_config('paper')``).
    hlo_config: config of the compiled step, or None for no compilation.
    meshes: (data, fsdp, tensor) sizes; each uses the first devices.
    devices: default ``jax.devices()``.
    fast_codegen, dump_dir: see ``compiled_figures``.
  """
  devices = list(jax.devices() if devices is None else devices)
  with _abstract_models_cached():
    for shape in meshes:
      yield run_mesh(mem_config, hlo_config, tuple(shape), devices,
                     fast_codegen, dump_dir)


@functools.lru_cache(maxsize=1)
def _git_revision() -> str:
  """Commit of the measured code, marked when the work tree differs from it."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
        capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown"
  return rev.strip() + (" + uncommitted changes" if dirty.strip() else "")


def _mib(b: int) -> str:
  return f"{b / 2**20:,.1f}"


def _config_caption(c: dict[str, Any]) -> str:
  return (f"{c['variant']} widths, depths {tuple(c['encoder_depths'])}/"
          f"{tuple(c['decoder_depths'])}, {c['image_size']}x{c['image_size']}"
          f", {c['dtype']}, batch {tuple(c['batch_per_task'])} per task")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  """Markdown table of the JSON lines (MiB per device; bytes per step)."""
  caption = [f"Memory columns: {_config_caption(rows[0]['memory_config'])}."]
  if rows[0].get("hlo_config"):
    caption.append(
        "Collective and temp columns (compiled step): "
        f"{_config_caption(rows[0]['hlo_config'])}; a collective cell is "
        "'ops per step / MiB per device' (buffer size), 'wire' the ring "
        "estimate of MiB each device sends per step.")
  head = ("| mesh (d,f,t) | params MiB/dev | ratio | opt MiB/dev | ratio |"
          " all-reduce | all-gather | reduce-scatter | all-to-all |"
          " coll-permute | wire MiB/dev | temp MiB/dev |")
  lines = [" ".join(caption), "", head, "| --- |" + " ---: |" * 11]
  for r in rows:
    shape = ",".join(str(v) for v in r["mesh"].values())
    cells = [f"({shape})", _mib(r["params_bytes_per_device"]),
             f"{r['params_ratio']:.3f}", _mib(r["opt_bytes_per_device"]),
             f"{r['opt_ratio']:.3f}"]
    coll = r.get("collectives")
    for k in hlo.COLLECTIVES:
      c = coll[k] if coll else None
      cells.append("" if c is None else "0" if not c["count"] else
                   f"{c['count']} / {_mib(c['bytes'])}")
    cells.append(_mib(sum(c["wire_bytes"] for c in coll.values()))
                 if coll else "")
    ma = r.get("memory_analysis")
    cells.append(_mib(ma["temp"]) if ma else "")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _parse_depths(spec: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  enc, _, dec = spec.partition("/")
  return (tuple(int(x) for x in enc.split(",")),
          tuple(int(x) for x in dec.split(",")))


def define_flags(fv: flags.FlagValues, argv=None) -> None:
  """The benchmark's flags (``--config.*`` overrides looked up in ``argv``)."""
  cli_flags.DEFINE_config(fv, argv, default="paper",
                          help_string="Config whose model is measured")
  _define_device_flags(fv)
  flags.DEFINE_string("hlo_depths", "2,2,2,2/2,2,2,2,2", "Encoder/decoder "
                      "blocks per stage of the compiled model; 'full': the "
                      "config's own.", flag_values=fv)
  flags.DEFINE_integer("hlo_size", 256, "Image size of the compiled step; 0: "
                       "the config's.", flag_values=fv)
  flags.DEFINE_boolean("compile", True, "Compile the step for the HLO "
                       "columns (--nocompile: memory figures only).",
                       flag_values=fv)
  flags.DEFINE_boolean("full_codegen", False, "Compile the CPU code with "
                       "XLA's default optimization (slower; same HLO).",
                       flag_values=fv)
  flags.DEFINE_string("dump_hlo", None, "Directory: write each compiled "
                      "step's optimized HLO text here.", flag_values=fv)
  flags.DEFINE_boolean("table", False, "Print a markdown table at the end.",
                       flag_values=fv)
  flags.DEFINE_string("from_jsonl", None, "Only print the table of an "
                      "earlier run's JSON lines in this file.", flag_values=fv)


def main(argv, fv: flags.FlagValues) -> None:
  """Runs the benchmark with the parsed flags ``fv``."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  a = fv
  if a.from_jsonl:
    with open(a.from_jsonl) as f:
      print(markdown_table([json.loads(line) for line in f
                            if line.startswith("{")]))
    return
  logging.set_verbosity(logging.WARNING)
  meshes = [_parse_mesh(m) for m in a.meshes or DEFAULT_MESHES]
  devices = jax.devices()
  need = max(math.prod(m) for m in meshes)
  if len(devices) < need:
    raise SystemExit(f"{need} devices needed, {len(devices)} available "
                     "(XLA_FLAGS was set before this script?)")
  mem_config = with_abstract_vgg(fv.config)
  hlo_config = None
  if a.compile:
    hlo_config = reduced_config(
        mem_config, None if a.hlo_depths == "full" else
        _parse_depths(a.hlo_depths), a.hlo_size or None)
  rows = []
  t0 = time.perf_counter()
  for row in run(mem_config, hlo_config, meshes, devices,
                 not a.full_codegen, a.dump_hlo):
    rows.append(row)
    print(json.dumps(row), flush=True)
  if a.table:
    print(markdown_table(rows))
  print(f"# total {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  cli_flags.run("benchmarks/scaling.py", __doc__, define_flags, main,
                quiet_logging=False)
