"""Inference speed of UPOCR: single-image latency and batched throughput.

Usage: python benchmarks/predict.py [--config=CONFIG] [--size=N] [--batch=B ...]
    [--repeats=3] [--config.FIELD=VALUE ...]

Example:
  python benchmarks/predict.py --config=paper --size=512 --batch=1 --batch=4 \\
      --repeats=3 --config.model.dtype=bfloat16

Random weights (speed does not depend on them). Prints one JSON line per batch
size with compile time, median latency and images/s, and the device.
"""

import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from upocr_jax import cli_flags  # noqa: E402
from upocr_jax.models import UPOCR  # noqa: E402


def define_flags(fv: flags.FlagValues, argv=None) -> None:
  """The benchmark's flags (``--config.*`` overrides looked up in ``argv``)."""
  cli_flags.DEFINE_config(fv, argv, default="paper",
                          help_string="Config whose model is timed")
  flags.DEFINE_integer("size", None, "Image side (default: the config's "
                       "data.image_size).", flag_values=fv)
  flags.DEFINE_multi_integer("batch", [1], "Batch size",
                             flag_values=fv)
  flags.DEFINE_integer("repeats", 3, "Timed calls per batch size.",
                       flag_values=fv)


def main(argv, fv: flags.FlagValues) -> None:
  """Runs the benchmark with the parsed flags ``fv``."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  a = fv
  config = fv.config
  size = a.size or config.data.image_size
  t = time.perf_counter()
  model = nnx.jit(lambda: UPOCR(config.model, rngs=nnx.Rngs(0)))()
  jax.block_until_ready(nnx.state(model))
  init_s = time.perf_counter() - t
  forward = nnx.jit(lambda m, x, ids: m(x, ids)[-1])
  for b in a.batch:
    x = jax.random.uniform(jax.random.key(0), (b, size, size, 3))
    ids = jnp.zeros((b,), jnp.int32)
    t = time.perf_counter()
    jax.block_until_ready(forward(model, x, ids))
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(a.repeats):
      t = time.perf_counter()
      jax.block_until_ready(forward(model, x, ids))
      times.append(time.perf_counter() - t)
    med = statistics.median(times)
    print(json.dumps({
        "benchmark": "predict", "config": fv["config"].config_filename,
        "overrides": fv["config"].override_values,
        "dtype": config.model.dtype, "size": size, "batch": b,
        "init_s": round(init_s, 2), "compile_plus_first_s": round(compile_s, 2),
        "median_s": round(med, 3), "images_per_s": round(b / med, 3),
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
  cli_flags.run("benchmarks/predict.py", __doc__, define_flags, main)
