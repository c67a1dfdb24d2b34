"""A micro training config and subprocess helpers for the training tests."""

import json
import os
import re
import subprocess
import sys

from configs import upocr as upocr_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def micro_config(per_task: int = 8, steps: int = 6):
  """The smallest real UPOCR training run: 32x32 synthetic images.

  In-process tests see 8 fake devices (tests/conftest.py), so the default is
  8 examples per task over an (8, 1, 1) data-parallel mesh.
  """
  c = upocr_config.get_config("tiny")
  c.model.encoder.depths = (1, 1, 1, 1)
  c.model.decoder.depths = (1, 1, 1, 1, 1)
  d = c.data
  d.image_size = 32
  d.synthetic.min_size, d.synthetic.max_size = 32, 48
  d.synthetic.num_train, d.synthetic.num_eval = 12, 3
  d.read_threads, d.prefetch_buffer_size, d.worker_count = 1, 2, 0
  d.eval_batch_size = 3
  for key in ("text_removal", "tampered_text_detection", "text_segmentation"):
    d[key].batch_size = per_task
  c.train.steps = steps
  c.train.log_every = 1
  c.train.checkpoint_every = 3
  c.train.preview_every = 0
  c.train.eval_every = 0
  c.train.final_eval = False
  c.optim.warmup_steps = 2
  return c


# The same micro config as command-line overrides of configs/upocr.py:tiny.
MICRO_FLAGS = [
    "--config=configs/upocr.py:tiny",
    "--config.model.encoder.depths=(1,1,1,1)",
    "--config.model.decoder.depths=(1,1,1,1,1)",
    "--config.data.image_size=32",
    "--config.data.synthetic.min_size=32", "--config.data.synthetic.max_size=48",
    "--config.data.synthetic.num_train=12", "--config.data.synthetic.num_eval=3",
    "--config.data.read_threads=1", "--config.data.prefetch_buffer_size=2",
    "--config.data.worker_count=0", "--config.data.eval_batch_size=3",
    "--config.train.log_every=1", "--config.train.checkpoint_every=3",
    "--config.train.preview_every=0", "--config.train.eval_every=0",
    "--config.train.final_eval=False", "--config.optim.warmup_steps=2",
    "--config.data.text_removal.batch_size=1",
    "--config.data.tampered_text_detection.batch_size=1",
    "--config.data.text_segmentation.batch_size=1",
]
# Subprocess runs of the same programs share compiled executables.
CACHE_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                         f"upocr-test-jax-cache-{os.getuid()}")


def per_task_flags(n: int) -> list[str]:
  return [f"--config.data.{k}.batch_size={n}" for k in
          ("text_removal", "tampered_text_detection", "text_segmentation")]


def train_cmd(workdir, *extra: str) -> list[str]:
  return [sys.executable, "-m", "upocr_jax.main", f"--workdir={workdir}",
          *MICRO_FLAGS, *extra]


def env(devices: int = 1) -> dict:
  e = {**os.environ, "PYTHONPATH": REPO, "JAX_PLATFORMS": "cpu",
       # The session's flags (tests/conftest.py) with this device count.
       "XLA_FLAGS": re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                           os.environ.get("XLA_FLAGS", ""))
                    + f" --xla_force_host_platform_device_count={devices}",
       "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  return e


def run(cmd, devices: int = 1, timeout: int = 300) -> subprocess.CompletedProcess:
  p = subprocess.run(cmd, cwd=REPO, env=env(devices), capture_output=True,
                     text=True, timeout=timeout)
  assert p.returncode == 0, p.stderr[-4000:]
  return p


def losses(workdir) -> dict[int, float]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
