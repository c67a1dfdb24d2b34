"""Test-session setup: fake CPU devices and parsed absl flags.

Sharding tests need several devices; XLA only offers fake host devices when the
flag is set before jax is imported, so it is set here for the whole session.
Single-device code is unaffected (it runs on device 0).
"""

import os
import sys

# The suite's time is mostly XLA compiling tiny programs: LLVM optimisation
# level 0 compiles faster and the slower compiled code costs tests of a few
# steps little (measured in docs/results.md, "The test suite").
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The repository root: tests import the library and their helpers from it
# (``from tests import inference_helpers``, ``from tests.training import ...``).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402

# grain worker processes and absl-based code expect parsed flags.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  # TPU compile-only tests (libtpu, no TPU): `-m "not tpu"` skips them.
  config.addinivalue_line(
      "markers", "tpu: compiles for a TPU topology with libtpu (minutes)")
  # GPU compile-only tests (CUDA plugin, no GPU): `-m "not gpu_aot"` skips
  # them.
  config.addinivalue_line(
      "markers", "gpu_aot: compiles for a GPU with the CUDA plugin, no GPU "
      "(minutes)")
