"""Mesh and shardings from the config, for parameters and activations.

``config.mesh.axes`` names the mesh axes (e.g. data, fsdp, tensor) and
``config.mesh.shape`` their sizes (one entry may be -1: all remaining devices).
``config.sharding.rules`` maps each logical axis name to a mesh axis, a tuple
of mesh axes, or None (replicated). Parameters carry their names as
``logical_axes`` metadata (see ``upocr_jax.models.layers``); the model's
activations name theirs at stage boundaries (``constrain``, names ``act_*``,
see ``layers.MAP_AXES``). The batch is split over ``config.sharding.batch_axes``
and the activations' ``act_batch`` dimension always follows it (the input
batch is laid out that way).

A dimension that the mapped mesh axes do not divide is replicated along them
instead; every such case is logged once by name.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# The logical batch axis of activations; it follows config.sharding.batch_axes.
ACT_BATCH = "act_batch"
Rules = Mapping[str, tuple[str, ...]]


class ShardingConfigError(ValueError):
  """The mesh or sharding config is invalid; the message names the field."""


def mesh_shape(config: ml_collections.ConfigDict,
               num_devices: int) -> tuple[int, ...]:
  """Resolves ``config.mesh.shape`` (with at most one -1) for num_devices."""
  axes, shape = tuple(config.mesh.axes), list(config.mesh.shape)
  if len(axes) != len(shape):
    raise ShardingConfigError(
        f"config.mesh.shape {tuple(shape)} and config.mesh.axes {axes} differ "
        "in length")
  if shape.count(-1) > 1:
    raise ShardingConfigError("config.mesh.shape: at most one -1 entry")
  if any(s == 0 or s < -1 for s in shape):
    raise ShardingConfigError(f"config.mesh.shape: bad size in {tuple(shape)}")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if num_devices % known:
      raise ShardingConfigError(
          f"config.mesh.shape {tuple(shape)}: {num_devices} devices are not "
          f"divisible by the fixed axes' product {known}")
    shape[shape.index(-1)] = num_devices // known
  if math.prod(shape) != num_devices:
    raise ShardingConfigError(
        f"config.mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, "
        f"but {num_devices} are available")
  return tuple(shape)


def make_mesh(config: ml_collections.ConfigDict,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh with Auto axes (so XLA propagates shardings) from the config."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(config, len(devices))
  try:
    from jax.experimental import mesh_utils  # pylint: disable=g-import-not-at-top
    grid = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    grid = np.asarray(devices).reshape(shape)
  axes = tuple(config.mesh.axes)
  return Mesh(grid, axes, axis_types=(AxisType.Auto,) * len(axes))


def _rules(config: ml_collections.ConfigDict) -> dict[str, tuple[str, ...]]:
  rules = {}
  mesh_axes = set(config.mesh.axes)
  for name, target in config.sharding.rules:
    if name == ACT_BATCH:
      raise ShardingConfigError(
          f"config.sharding.rules: {ACT_BATCH!r} is not a rule; it follows "
          "config.sharding.batch_axes")
    targets = () if target is None else (
        (target,) if isinstance(target, str) else tuple(target))
    for t in targets:
      if t not in mesh_axes:
        raise ShardingConfigError(
            f"config.sharding.rules: logical axis {name!r} maps to {t!r}, "
            f"which is not in config.mesh.axes {tuple(config.mesh.axes)}")
    rules[name] = targets
  return rules


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh, rules: Rules,
                    name: str = "", notes: list[str] | None = None) -> P:
  """PartitionSpec for one array from its logical axes and the rules."""
  used: set[str] = set()
  spec = []
  for dim, logical in zip(shape, axes):
    # A target the mesh lacks acts as a size-1 axis (e.g. a 1-D eval mesh).
    targets = tuple(t for t in rules.get(logical, ()) if t not in used
                    and mesh.shape.get(t, 1) > 1) if logical else ()
    size = math.prod(mesh.shape[t] for t in targets)
    if targets and dim % size:
      if notes is not None:
        notes.append(f"{name}: dim {dim} ({logical}) not divisible by "
                     f"{'x'.join(targets)}={size}; replicated")
      targets = ()
    used.update(targets)
    spec.append(None if not targets else
                targets[0] if len(targets) == 1 else targets)
  return P(*spec)


def state_shardings(state: Any, mesh: Mesh,
                    config: ml_collections.ConfigDict) -> Any:
  """NamedShardings for an nnx.State (or pytree of Variables) by the rules."""
  rules = _rules(config)
  notes: list[str] = []

  def one(path, var):
    meta = var.get_metadata() if isinstance(var, nnx.Variable) else {}
    axes = meta.get("logical_axes") or (None,) * len(var.shape)
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return NamedSharding(mesh, logical_to_spec(axes, var.shape, mesh, rules,
                                               name, notes))

  out = jax.tree_util.tree_map_with_path(
      one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  for n in sorted(set(notes)):
    logging.info("sharding: %s", n)
  return out


def batch_sharding(mesh: Mesh, config: ml_collections.ConfigDict,
                   ndim: int) -> NamedSharding:
  """Sharding of a batch array: dim 0 over the batch axes, the rest whole."""
  axes = tuple(config.sharding.batch_axes)
  return NamedSharding(mesh, P(axes if len(axes) > 1 else axes[0],
                               *([None] * (ndim - 1))))


def batch_shard_count(axis_sizes: Mapping[str, int],
                      batch_axes: Sequence[str]) -> int:
  """How many data-parallel pieces a batch split over ``batch_axes`` is in,
  given each mesh axis's size (``mesh.shape`` or the config's resolved shape).
  """
  return math.prod(axis_sizes[a] for a in batch_axes)


def num_batch_shards(mesh: Mesh, config: ml_collections.ConfigDict) -> int:
  """How many data-parallel pieces the batch is split into on ``mesh``."""
  return batch_shard_count(mesh.shape, config.sharding.batch_axes)


def abstract(tree: Any, shardings: Any) -> Any:
  """``tree``'s arrays as ``jax.ShapeDtypeStruct`` placed by the matching
  ``shardings`` (what ``jit(...).lower`` takes to compile without data)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      tree, shardings)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def activation_rules(config: ml_collections.ConfigDict | None,
                     batch_axes: Sequence[str] | None = None) -> Rules:
  """The rules that ``constrain`` applies: ``config.sharding.rules`` plus
  ``act_batch`` -> ``batch_axes`` (default ``config.sharding.batch_axes``).

  ``config`` may be None or lack a ``sharding`` section (a weight directory's
  model config): then only the batch is split.
  """
  has = config is not None and "sharding" in config
  rules = dict(_rules(config)) if has else {}
  if batch_axes is None:
    batch_axes = config.sharding.batch_axes if has else ()
  rules[ACT_BATCH] = tuple(batch_axes)
  return rules


# The activation rules of the code traced inside ``mesh_context``.
_ACTIVATION_RULES: contextvars.ContextVar[Rules | None] = (
    contextvars.ContextVar("upocr_activation_rules", default=None))
_NOTED: set[str] = set()


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules: Rules) -> Iterator[None]:
  """``jax.set_mesh(mesh)`` plus the activation rules (see ``activation_rules``)
  that ``constrain`` applies to the model traced inside."""
  token = _ACTIVATION_RULES.set(dict(rules))
  try:
    with jax.set_mesh(mesh):
      yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Pins an activation's layout by its logical axes and the current rules.

  A no-op outside ``mesh_context`` or without a mesh. Dims whose rule is None
  (or absent) are replicated, as for parameters. Why pin at all: left to
  propagate shardings through the whole model, XLA's SPMD partitioner mixed
  up data shards on meshes with data, fsdp and tensor axes all > 1 (on a
  (2,2,2) mesh the outputs of batch shards 1 and 2 were swapped). Pinning the
  stage boundaries (by default: plain data parallelism, activations replicated
  over the tensor axis between stages, as Megatron-style tensor parallelism
  has them) avoids that and states the intended layout.
  """
  rules = _ACTIVATION_RULES.get()
  if rules is None:
    return x
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if len(logical_axes) != x.ndim:
    raise ValueError(f"constrain: logical axes {tuple(logical_axes)} do not "
                     f"match shape {x.shape}")
  notes: list[str] = []
  spec = logical_to_spec(logical_axes, x.shape, mesh, rules, "activation",
                         notes)
  for n in notes:
    if n not in _NOTED:  # traced once per shape; say it once
      _NOTED.add(n)
      logging.info("sharding: %s", n)
  return jax.lax.with_sharding_constraint(x, spec)


def _fmt_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024
  raise AssertionError("unreachable")


def _fmt_spec(spec: P, ndim: int) -> str:
  if not any(spec):
    return "repl"
  dims = list(spec) + [None] * (ndim - len(spec))
  return "(" + ",".join(
      "-" if d is None else d if isinstance(d, str) else "+".join(d)
      for d in dims) + ")"


def param_table(params: Any) -> str:
  """A readable table: parameters -> PartitionSpecs and bytes per device.

  ``params``: a pytree of arrays or ShapeDtypeStructs with NamedShardings
  (e.g. ``TrainSetup.abstract_params``). One row per module: each of its
  parameters as ``name shape spec`` (spec: the mesh axes of each dim, ``-``
  whole, ``repl`` replicated), then bytes on one device and in all. The
  blocks of a stage (``blocks/<i>``) are one row ``blocks/*`` with their
  count, so the paper model's 18-block stages stay short. Ends with totals.
  """
  modules: dict[str, dict[str, list]] = {}
  total = per_device = count = 0
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
    sh = x.sharding
    spec = sh.spec if isinstance(sh, NamedSharding) else P()
    local = math.prod(sh.shard_shape(x.shape)) * x.dtype.itemsize
    nbytes = x.size * x.dtype.itemsize
    module = modules.setdefault("/".join(keys[:-1]), {})
    module[keys[-1]] = [tuple(x.shape), _fmt_spec(spec, x.ndim), local, nbytes]
    total, per_device, count = total + nbytes, per_device + local, count + x.size
  rows: dict[tuple, list[int]] = {}
  for name, ps in modules.items():
    keys = name.split("/")
    keys = ["*" if i and keys[i - 1] == "blocks" and k.isdigit() else k
            for i, k in enumerate(keys)]
    desc = "  ".join(f"{k} {'x'.join(map(str, v[0])) or '()'} {v[1]}"
                     for k, v in ps.items())
    row = rows.setdefault(("/".join(keys) or "(top)", desc), [0, 0, 0])
    row[0] += 1
    row[1] += sum(v[2] for v in ps.values())
    row[2] += sum(v[3] for v in ps.values())
  width = max(len(k[0]) for k in rows)
  dwidth = max(len(k[1]) for k in rows)
  lines = [f"{'module':<{width}} {'n':>3}  {'parameters: shape mesh-axes':<{dwidth}}"
           f" {'per device':>10} {'global':>10}"]
  for (name, desc), (n, local, glob) in rows.items():
    lines.append(f"{name:<{width}} {n:>3}  {desc:<{dwidth}} "
                 f"{_fmt_bytes(local):>10} {_fmt_bytes(glob):>10}")
  lines.append(f"total: {count:,} parameters, {_fmt_bytes(per_device)} per "
               f"device, {_fmt_bytes(total)} in all")
  return "\n".join(lines)
