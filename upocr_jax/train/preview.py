"""PNG grids of predictions on fixed held-out samples, written during training.

Each row is one sample: input | prediction | target, grouped by task. The
samples are the first examples of each task's evaluation split, so successive
grids of a run show the same images.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image, ImageDraw

from input_pipeline import pipeline
from upocr_jax.inference import runner

PREVIEW_DIR = "previews"


def fixed_samples(config: ml_collections.ConfigDict, per_task: int = 2
                  ) -> dict[str, np.ndarray]:
  """The first ``per_task`` eval examples of every task (uint8 arrays)."""
  images, targets, ids = [], [], []
  for task in range(len(config.model.tasks)):
    ds, _ = pipeline.create_eval_dataset(config, task, 0, 1,
                                         max_examples=per_task)
    for batch in ds:
      keep = np.asarray(batch["example_mask"])
      images.append(_uint8(batch["image"])[keep])
      targets.append(_uint8(batch["target"])[keep])
      ids.append(np.asarray(batch["task_id"])[keep])
  return {"image": np.concatenate(images), "target": np.concatenate(targets),
          "task_id": np.concatenate(ids).astype(np.int32)}


def _uint8(x) -> np.ndarray:
  x = np.asarray(x)
  return x if x.dtype == np.uint8 else (np.clip(x, 0, 1) * 255 + 0.5).astype(
      np.uint8)


def grid(samples: dict[str, np.ndarray], preds: np.ndarray,
         tasks: list[str]) -> Image.Image:
  """input | prediction | target rows with the task name on each row."""
  n, h, w, _ = samples["image"].shape
  label_w = 150
  canvas = Image.new("RGB", (label_w + 3 * w + 8, n * (h + 4)), "white")
  draw = ImageDraw.Draw(canvas)
  for i in range(n):
    y = i * (h + 4)
    draw.text((4, y + h // 2 - 6), tasks[int(samples["task_id"][i])],
              fill="black")
    for j, img in enumerate((samples["image"][i], preds[i],
                             samples["target"][i])):
      canvas.paste(Image.fromarray(img), (label_w + j * (w + 4), y))
  return canvas


def write_preview(model, config: ml_collections.ConfigDict, workdir: str,
                  step: int, is_main: bool = True,
                  samples: dict[str, np.ndarray] | None = None) -> str | None:
  """Runs the model on the fixed samples; process 0 writes the PNG.

  ``samples``: ``fixed_samples(config)``, read once by callers that preview
  repeatedly.
  """
  samples = fixed_samples(config) if samples is None else samples
  # The eval forward (full float32), as upocr-predict would show them.
  out = runner.forward(model, jnp.asarray(samples["image"]),
                       jnp.asarray(samples["task_id"]))
  preds = (np.asarray(jax.device_get(out)) * 255.0 + 0.5).astype(np.uint8)
  if not is_main:
    return None
  out_dir = os.path.join(workdir, PREVIEW_DIR)
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, f"step_{step:07d}.png")
  grid(samples, preds, list(config.model.tasks)).save(path)
  return path
