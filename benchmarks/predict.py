"""Inference speed of UPOCR: single-image latency and batched throughput.

  python benchmarks/predict.py --config configs/upocr.py:paper --size 512 \\
      --batch 1 --batch 4 --repeats 3

Random weights (speed does not depend on them). Prints one JSON line per batch
size with compile time, median latency and images/s, and the device.
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

from configs import upocr as upocr_config
from upocr_jax.models import UPOCR


def _load_config(spec: str):
  path, _, arg = spec.partition(":")
  if path.endswith("upocr.py"):
    return upocr_config.get_config(arg or "paper")
  raise SystemExit(f"--config {spec}: only configs/upocr.py[:variant] is known")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", default="configs/upocr.py:paper")
  p.add_argument("--size", type=int, default=512)
  p.add_argument("--batch", type=int, action="append")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--dtype", default=None, help="override config.model.dtype")
  a = p.parse_args()
  config = _load_config(a.config)
  if a.dtype:
    config.model.dtype = a.dtype
  t = time.perf_counter()
  model = nnx.jit(lambda: UPOCR(config.model, rngs=nnx.Rngs(0)))()
  jax.block_until_ready(nnx.state(model))
  init_s = time.perf_counter() - t
  forward = nnx.jit(lambda m, x, ids: m(x, ids)[-1])
  for b in a.batch or [1]:
    x = jax.random.uniform(jax.random.key(0), (b, a.size, a.size, 3))
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
        "benchmark": "predict", "config": a.config,
        "dtype": config.model.dtype, "size": a.size, "batch": b,
        "init_s": round(init_s, 2), "compile_plus_first_s": round(compile_s, 2),
        "median_s": round(med, 3), "images_per_s": round(b / med, 3),
        "device": str(jax.devices()[0].device_kind),
        "platform": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d")}), flush=True)


if __name__ == "__main__":
  main()
