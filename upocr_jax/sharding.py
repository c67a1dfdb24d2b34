"""Mesh and shardings from the config.

``config.mesh.axes`` names the mesh axes (e.g. data, fsdp, tensor) and
``config.mesh.shape`` their sizes (one entry may be -1: all remaining devices).
``config.sharding.rules`` maps each logical axis name that parameters carry
(``logical_axes`` metadata, see ``upocr_jax.models.layers``) to a mesh axis, a
tuple of mesh axes, or None (replicated). The batch is split over
``config.sharding.batch_axes``.

A parameter dimension that the mapped mesh axes do not divide is replicated
along them instead; every such case is logged once (at start-up) by name.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from upocr_jax.models import layers


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


def _rules(config: ml_collections.ConfigDict) -> dict[str, Any]:
  rules = {}
  mesh_axes = set(config.mesh.axes)
  for name, target in config.sharding.rules:
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
                    mesh: Mesh, rules: dict[str, tuple[str, ...]],
                    name: str = "", notes: list[str] | None = None) -> P:
  """PartitionSpec for one array from its logical axes and the rules."""
  used: set[str] = set()
  spec = []
  for dim, logical in zip(shape, axes):
    targets = tuple(t for t in rules.get(logical, ()) if t not in used
                    and mesh.shape[t] > 1) if logical else ()
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


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def mesh_context(mesh: Mesh, batch_axes: Sequence[str]) -> Iterator[None]:
  """``jax.set_mesh(mesh)`` plus the model's activation batch axes.

  Code traced inside pins the batch dimension of the model's activations to
  ``batch_axes`` at every stage boundary (``layers.shard_batch``).
  """
  with jax.set_mesh(mesh), layers.batch_axes_context(batch_axes):
    yield
