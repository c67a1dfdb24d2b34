"""Where training metrics go: stdout, TensorBoard, ``WORKDIR/metrics.jsonl``.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per logged step;
on resume the lines past the restored step are dropped, so a run that was
killed and resumed has the same file as one that ran straight through.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np
from absl import logging

METRICS_FILE = "metrics.jsonl"


def _plain(v: Any) -> Any:
  if isinstance(v, (np.generic, np.ndarray)):
    v = v.item()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)  # JSON has no NaN/inf
  return v


class MetricWriter:
  """Writes scalar metrics of a step to every sink."""

  def __init__(self, workdir: str, enabled: bool = True,
               tensorboard: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tb = None
    if enabled and tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops logged lines with a step larger than ``step`` (resume)."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip()]
    keep = [line for line in lines if json.loads(line)["step"] <= step]
    if len(keep) != len(lines):
      logging.info("metrics.jsonl: dropping %d lines past step %d",
                   len(lines) - len(keep), step)
      with open(self.path, "w") as f:
        f.writelines(keep)

  def write(self, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), **{k: _plain(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def format_line(step: int, total: int, m: Mapping[str, float],
                steps_per_s: float | None, images_per_s: float | None) -> str:
  """One human-readable progress line; rates and ETA only once steps have been
  timed (``steps_per_s`` None: the window held only the compiling step)."""
  terms = " ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in sorted(m.items())
                   if k.startswith("loss/") and k != "loss/total")
  line = (f"step {step}/{total} loss={m.get('loss', float('nan')):.4f} "
          f"[{terms}] grad_norm={m.get('grad_norm', float('nan')):.3g} "
          f"lr={m.get('lr', float('nan')):.3g}")
  if not steps_per_s or steps_per_s <= 0:
    return line
  eta = (total - step) / steps_per_s
  h, rem = divmod(int(eta), 3600)
  return (f"{line} {steps_per_s:.2f} steps/s {images_per_s or 0.0:.1f} img/s "
          f"ETA {h}h{rem // 60:02d}m{rem % 60:02d}s")
