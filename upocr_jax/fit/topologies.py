"""Known TPU topologies and their public per-chip specifications.

Names are ``<generation>:<chip grid>`` as ``jax.experimental.topologies``
(libtpu) accepts them, e.g. ``v5e:2x2`` or ``v4:2x2x1``. Figures are the
per-chip numbers of the Cloud TPU documentation (cloud.google.com/tpu/docs
/v4, /v5e, /v5p, /v6e): peak bfloat16 FLOP/s, HBM capacity and HBM
bandwidth. The runtime keeps a little of the HBM for itself, so a program
that uses nearly all of it may still not run.
"""

from __future__ import annotations

import dataclasses
import math
import os

from jax.experimental import topologies as jax_topologies

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  """Per-chip specification of one TPU generation."""
  name: str
  peak_bf16_flops: float      # FLOP/s per chip
  hbm_bytes: int              # per chip
  hbm_bandwidth: float        # bytes/s per chip
  chip_config: str            # libtpu chip_config_name: one device per chip
  host_bounds: tuple[int, int, int]  # chips per host (multi-host slices)


GENERATIONS = {
    "v4": Generation("v4", 275e12, 32 * GiB, 1200e9, "megacore", (2, 2, 1)),
    "v5e": Generation("v5e", 197e12, 16 * GiB, 819e9, "default", (2, 2, 1)),
    "v5p": Generation("v5p", 459e12, 95 * GiB, 2765e9, "default", (2, 2, 1)),
    "v6e": Generation("v6e", 918e12, 32 * GiB, 1638e9, "default", (2, 2, 1)),
}
# Slice shapes per generation (3D tori for v4/v5p, 2D for v5e/v6e).
_SHAPES = {
    "v4": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4"),
    "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4"),
    "v5e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v6e": ("1x1", "2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
}
KNOWN = tuple(f"{g}:{s}" for g, shapes in _SHAPES.items() for s in shapes)


@dataclasses.dataclass(frozen=True)
class Topology:
  """A named slice: its chips, their generation and libtpu arguments."""
  name: str
  generation: Generation
  grid: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.grid)

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    """One host for single-host slices (up to 8 chips of v5e/v6e, 4 of
    v4/v5p), else the generation's host shape."""
    g = self.grid + (1,) * (3 - len(self.grid))
    if self.generation.name in ("v5e", "v6e") and self.chips <= 8:
      return g
    if self.chips <= 4:
      return g
    return self.generation.host_bounds


def get(name: str) -> Topology:
  """The :class:`Topology` of a known name.

  Raises:
    ValueError: one line naming the unknown topology and the known ones.
  """
  if name not in KNOWN:
    raise ValueError(f"--topology {name!r} is not a known TPU topology; "
                     f"known: {', '.join(KNOWN)}")
  gen, shape = name.split(":")
  return Topology(name, GENERATIONS[gen],
                  tuple(int(s) for s in shape.split("x")))


def devices(topology: Topology) -> list:
  """Compile-only devices of ``topology`` (needs libtpu, no TPU).

  Raises:
    ImportError: libtpu is not installed (``pip install upocr_jax[tpu]``);
      entry points print it as one line.
  """
  # libtpu takes /tmp/libtpu_lockfile for the process's lifetime; any other
  # process that imported jax with libtpu installed (and JAX_PLATFORMS unset)
  # may hold it. Compile-only devices use no TPU, so sharing is safe.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    # Loads the TPU plugin (libtpu) on first use.
    desc = jax_topologies.get_topology_desc(
        topology_name=topology.name, platform="tpu",
        chip_config_name=topology.generation.chip_config,
        chips_per_host_bounds=topology.chips_per_host_bounds, num_slices=1)
  except RuntimeError as e:
    if "not installed" in str(e):
      raise ImportError(
          f"--topology {topology.name}: compiling for TPU needs libtpu "
          "(pip install 'jax[tpu]==<the jax version>' or upocr_jax[tpu]); "
          "no TPU is needed") from e
    raise
  return list(desc.devices)


def libtpu_available() -> bool:
  """Whether libtpu is importable (compile-only TPU reports work)."""
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def format_table() -> str:
  """The known topologies and their per-chip figures, one line each."""
  lines = [f"{'topology':12s} {'chips':>5s} {'HBM/chip':>9s} "
           f"{'bf16 TFLOP/s':>12s} {'HBM GB/s':>8s}"]
  for name in KNOWN:
    t = get(name)
    g = t.generation
    lines.append(f"{name:12s} {t.chips:5d} {g.hbm_bytes / GiB:6.0f} GiB "
                 f"{g.peak_bf16_flops / 1e12:12.0f} "
                 f"{g.hbm_bandwidth / 1e9:8.0f}")
  return "\n".join(lines)
