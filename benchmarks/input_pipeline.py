"""Throughput of the 512x512 training input path, per task, on this machine.

Writes a synthetic data set in the official layouts (JPEG, raw sides
--min_size..--max_size, like the real photos), then times, in ONE process and
ONE thread (= one grain worker), read + decode + label conversion + the paper's
augmentations + resize for each task, and finally the whole interleaved
pipeline (batch per task as the config says, in-process). Prints images/s.

Usage: python benchmarks/input_pipeline.py [--config=CONFIG] [--num=48]
    [--min_size=480] [--max_size=800] [--steps=4] [--config.FIELD=VALUE ...]

Example:
  python benchmarks/input_pipeline.py --num=48 --config=paper \\
      --config.data.image_size=384
"""

import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
import numpy as np  # noqa: E402

from input_pipeline import pipeline  # noqa: E402
from input_pipeline import schema  # noqa: E402
from input_pipeline import sources  # noqa: E402
from input_pipeline import synthetic  # noqa: E402
from input_pipeline import transforms  # noqa: E402
from input_pipeline import write_synthetic  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402


def define_flags(fv: flags.FlagValues, argv=None) -> None:
  """The benchmark's flags (``--config.*`` overrides looked up in ``argv``)."""
  cli_flags.DEFINE_config(fv, argv, default="paper", help_string="Config "
                          "whose data section (augmentations, size) is timed")
  flags.DEFINE_integer("num", 48, "Images per task.", flag_values=fv)
  flags.DEFINE_integer("min_size", 480, "Smallest raw image side.",
                       flag_values=fv)
  flags.DEFINE_integer("max_size", 800, "Largest raw image side.",
                       flag_values=fv)
  flags.DEFINE_integer("steps", 4, "Full-pipeline batches to time.",
                       flag_values=fv)


def main(argv, fv: flags.FlagValues) -> None:
  """Runs the benchmark with the parsed flags ``fv``."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  args = fv
  with tempfile.TemporaryDirectory() as tmp:
    params = synthetic.SynthParams(args.min_size, args.max_size, 6)
    roots = write_synthetic.write_dataset(tmp, args.num, 1, 0, params)
    cfg = fv.config.data.copy_and_resolve_references()
    cfg.worker_count = 0
    cfg.read_threads = 1
    for key, root in roots.items():
      cfg[key].source = "folder"
      cfg[key].root = root
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs visible; python {platform.python_version()}")
    print(f"raw images {args.min_size}-{args.max_size} px JPEG, output "
          f"{cfg.image_size}x{cfg.image_size}")
    for task_id, key in enumerate(schema.TASK_KEYS):
      src = sources.make_source(cfg, task_id, train=True)
      rng = np.random.default_rng(0)
      src[0]  # Warm-up (imports, caches).
      n = len(src)
      c0, t0 = time.process_time(), time.perf_counter()
      read = [src[i] for i in range(n)]
      t1 = time.perf_counter()
      for ex in read:
        transforms.train_transform(ex, rng, cfg[key], cfg.image_size)
      c2, t2 = time.process_time(), time.perf_counter()
      # Images per CPU-second = per core; wall-clock rate shown beside it
      # (lower when other programs share the cores).
      print(f"{schema.TASKS[task_id]:>24}: {n / (c2 - c0):6.1f} img/s per core "
            f"(CPU time), {n / (t2 - t0):6.1f} img/s wall; read+decode "
            f"{1000 * (t1 - t0) / n:5.1f} ms, augment+resize "
            f"{1000 * (t2 - t1) / n:5.1f} ms per image (wall)")
    it = pipeline.create_train_iterator(cfg)
    next(it)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(args.steps):
      batch = next(it)
    c1, t1 = time.process_time(), time.perf_counter()
    imgs = args.steps * len(batch["task_id"])
    print(f"{'full pipeline':>24}: {imgs / (c1 - c0):6.1f} img/s per core "
          f"(CPU time), {imgs / (t1 - t0):6.1f} img/s wall; "
          f"{len(batch['task_id'])} images per batch, collate included")


if __name__ == "__main__":
  cli_flags.run("benchmarks/input_pipeline.py", __doc__, define_flags, main)
