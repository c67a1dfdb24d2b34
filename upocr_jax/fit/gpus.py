"""Known GPUs for compile-only fit reports, and their public specifications.

XLA compiles for a GPU it does not have when the CUDA PJRT plugin
(``pip install "jax[cuda12]==<jax version>"``) is given a target config: a
``stream_executor.GpuTargetConfigProto`` in text format describing the
device. :func:`target_config` writes it from the hardware facts below;
:func:`devices` returns compile-only devices of one GPU (topology ``1x1x1``:
one partition, one host, one device), with no GPU and no CUDA driver.

Figures are NVIDIA's public datasheet numbers for the H100 SXM5 80 GB: 132
SMs of compute capability 9.0, 989 TFLOP/s dense bfloat16 (tensor cores),
3.35 TB/s HBM3, 50 MB of L2, 1.98 GHz boost clock, 228 KiB of shared memory
per SM (227 KiB per block when opted in). ``hbm_bytes`` is the memory CUDA
reports for the 80 GB part (79.1 GiB). JAX preallocates 75 % of it by
default: a step needing more runs only with ``XLA_PYTHON_CLIENT_MEM_FRACTION``
raised (e.g. ``.95``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import jax
from jax.experimental import topologies as jax_topologies

# Triton GEMM fusions are tuned by running candidate kernels on the device
# (autotuning); without a GPU that fails. cuBLAS GEMMs need no tuning run, so
# the GPU compile uses them (per compile, not process-wide XLA_FLAGS: the
# flags are read once, when the first backend starts, which in a test
# session or a script that already used the CPU is too late).
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}

# The cuDNN version the compiled program may assume: the oldest one that
# jax[cuda12] 0.10 accepts (nvidia-cudnn-cu12>=9.8).
_CUDNN_VERSION = (9, 8, 0)


@dataclasses.dataclass(frozen=True)
class Gpu:
  """Public hardware facts of one GPU model."""
  name: str                    # --topology name
  device_kind: str             # as CUDA names the device
  peak_bf16_flops: float       # dense tensor-core FLOP/s
  hbm_bytes: int               # device memory as CUDA reports it
  hbm_bandwidth: float         # bytes/s
  compute_capability: tuple[int, int]
  sm_count: int
  fp32_units_per_sm: int
  l2_cache_bytes: int
  clock_ghz: float
  shared_memory_per_sm: int
  shared_memory_per_block_optin: int

  @property
  def peak_fp32_flops(self) -> float:
    """FLOP/s of plain float32 (CUDA cores, one FMA per unit per clock):
    what matmuls at HIGHEST precision run at, no tensor cores."""
    return 2 * self.sm_count * self.fp32_units_per_sm * self.clock_ghz * 1e9


GPUS = {
    "h100": Gpu("h100", "NVIDIA H100 80GB HBM3", 989e12, 84_942_979_072,
                3.35e12, (9, 0), sm_count=132, fp32_units_per_sm=128,
                l2_cache_bytes=50 * 2**20, clock_ghz=1.98,
                shared_memory_per_sm=228 * 2**10,
                shared_memory_per_block_optin=227 * 2**10),
}
KNOWN = tuple(GPUS)


def get(name: str) -> Gpu:
  """The :class:`Gpu` of a known name.

  Raises:
    ValueError: one line naming the unknown GPU and the known ones.
  """
  if name not in GPUS:
    raise ValueError(f"--topology {name!r} is not a known GPU; known: "
                     f"{', '.join(KNOWN)}")
  return GPUS[name]


def target_config(gpu: Gpu) -> str:
  """The ``GpuTargetConfigProto`` (text format) that XLA compiles for."""
  major, minor = gpu.compute_capability
  dnn = dict(zip(("major", "minor", "patch"), _CUDNN_VERSION))
  # CUDA limits common to every GPU since compute capability 7.0.
  return f"""gpu_device_info {{
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  core_count: {gpu.sm_count}
  fpus_per_core: {gpu.fp32_units_per_sm}
  threads_per_block_limit: 1024
  threads_per_warp: 32
  threads_per_core_limit: 2048
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  shared_memory_per_block: 49152
  shared_memory_per_core: {gpu.shared_memory_per_sm}
  shared_memory_per_block_optin: {gpu.shared_memory_per_block_optin}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(gpu.hbm_bandwidth)}
  l2_cache_size: {gpu.l2_cache_bytes}
  clock_rate_ghz: {gpu.clock_ghz}
  device_memory_size: {gpu.hbm_bytes}
}}
platform_name: "CUDA"
dnn_version_info {{ major: {dnn['major']} minor: {dnn['minor']} patch: {dnn['patch']} }}
device_description_str: "{gpu.device_kind}"
"""


def cuda_aot_available() -> bool:
  """Whether the CUDA PJRT plugin is installed (compile-only GPU reports
  work; no GPU or driver needed)."""
  try:
    return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
  except ModuleNotFoundError:  # no jax_plugins package at all
    return False


def devices(gpu: Gpu) -> list:
  """Compile-only devices of one ``gpu`` (needs the CUDA plugin, no GPU).

  Raises:
    ImportError: the CUDA plugin is not installed (one line).
  """
  if not cuda_aot_available():
    raise ImportError(
        f"--topology {gpu.name}: compiling for a GPU needs the CUDA plugin: "
        f'pip install "jax[cuda12]=={jax.__version__}" (no GPU is needed)')
  # The plugin's start-up checks the CUDA driver's devices and, without a
  # GPU, fails and leaves its compiler unregistered; compile-only devices
  # need no driver. Read when jax first loads its plugins (here, unless a
  # backend started earlier).
  os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
  try:
    desc = jax_topologies.get_topology_desc(
        platform="cuda", target_config=target_config(gpu), topology="1x1x1")
  except NotImplementedError as e:
    raise RuntimeError(
        f"--topology {gpu.name}: the CUDA plugin did not start (jax loaded "
        "it before without a GPU); set JAX_PLATFORMS=cpu or "
        "JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 before jax starts") from e
  return list(desc.devices)

