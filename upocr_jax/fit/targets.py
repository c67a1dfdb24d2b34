"""Where ``--compile_only`` compiles: a known TPU slice, a known GPU, or the
local devices, with the per-chip figures a fit report compares against."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from upocr_jax.fit import gpus
from upocr_jax.fit import topologies

# On TPU a float32 matmul at HIGHEST precision is 6 bfloat16 passes
# (jax.lax.Precision's documentation).
TPU_HIGHEST_PASSES = 6


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
  unit: str = "chip"  # what one device is, in report headings
  # FLOP/s of float32 matmuls at HIGHEST precision (evaluation's precision)
  highest_flops: float | None = None

  def one_chip(self) -> "Target":
    """The same target restricted to its first device (one chip of a
    slice: the same chip and compiler)."""
    if len(self.devices) == 1:
      return self
    return dataclasses.replace(self, name=f"1 {self.unit} of {self.name}",
                               devices=self.devices[:1])

  def at_highest_precision(self) -> "Target":
    """The same target with ``peak_flops`` the rate of float32 matmuls at
    HIGHEST precision (None where unknown), for the roofline of a float32
    program such as the evaluation forward."""
    return dataclasses.replace(self, peak_flops=self.highest_flops)


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
                  g.hbm_bandwidth, gpus.COMPILER_OPTIONS,
                  highest_flops=g.peak_fp32_flops)
  if topology:
    t = topologies.get(topology)
    g = t.generation
    return Target(t.name, topologies.devices(t), g.hbm_bytes,
                  g.peak_bf16_flops, g.hbm_bandwidth,
                  highest_flops=g.peak_bf16_flops / TPU_HIGHEST_PASSES)
  devs = jax.devices()
  stats = devs[0].memory_stats() or {}
  return Target(f"local {devs[0].platform} x{len(devs)}", devs,
                stats.get("bytes_limit"), unit="device")
