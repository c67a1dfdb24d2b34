"""Trivial baselines on an evaluation split, scored like the model.

A trained model must beat these to show that it learned anything:

* text removal: return the input unchanged (``identity``);
* text segmentation: everything background (``all_background``) and
  everything text (``all_text``);
* tampered text detection: everything background (``all_background``).

They use the same evaluation pipeline and metric accumulators as
``upocr_jax.evaluation.evaluate``, so the numbers are directly comparable.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from input_pipeline import pipeline
from upocr_jax.evaluation import metrics as metrics_lib
from upocr_jax.evaluation.evaluate import dataset_config
from upocr_jax.tasks import (SEGMENTATION, TAMPERED, TASKS, TEXT_REMOVAL,
                             task_key)

RED = np.array([255, 0, 0], np.uint8)


def _constant(shape, value) -> np.ndarray:
  out = np.empty(shape[:2] + (3,), np.uint8)
  out[...] = value
  return out


def baselines(config: ml_collections.ConfigDict, task: str, dataset: str,
              max_examples: int = -1) -> dict[str, dict]:
  """{baseline name: metrics} for ``task`` on ``dataset`` (e.g. 'synthetic')."""
  cfg = dataset_config(config, task, dataset)
  task_id = TASKS.index(task)
  ds, _ = pipeline.create_eval_dataset(cfg, task_id, 0, 1, max_examples)
  if task_id == TEXT_REMOVAL:
    accs = {"identity": metrics_lib.TextRemovalMetrics()}
  elif task_id == SEGMENTATION:
    accs = {"all_background": metrics_lib.SegmentationMetrics(),
            "all_text": metrics_lib.SegmentationMetrics()}
  else:
    accs = {"all_background": metrics_lib.TamperMetrics()}
  for batch in ds:
    for i in np.nonzero(batch["example_mask"])[0]:
      if task_id == TEXT_REMOVAL:
        accs["identity"].update(batch["image"][i], batch["target"][i])
        continue
      label = batch["orig_target"][i]
      if task_id == SEGMENTATION:
        accs["all_background"].update(_constant(label.shape, 0), label)
        accs["all_text"].update(_constant(label.shape, 255), label)
      else:
        accs["all_background"].update(_constant(label.shape, RED), label)
  return {name: acc.result() for name, acc in accs.items()}


# The metrics the demo compares, (task, metric) in print order: each task's
# headline metric, and the tampered class's own F, since the mean F over (real,
# tampered) equals the real-text F while no pixel is marked tampered.
HEADLINE = ((TASKS[TEXT_REMOVAL], "psnr"), (TASKS[SEGMENTATION], "fgIoU"),
            (TASKS[TAMPERED], "mean_F"), (TASKS[TAMPERED], "tampered_F"))


def flat_baselines(config: ml_collections.ConfigDict, dataset: str,
                   max_examples: int = -1) -> dict[str, float]:
  """Every HEADLINE metric of every baseline: 'baseline/<task_key>/<name>/<metric>'."""
  out = {}
  for task in TASKS:
    metrics = [m for t, m in HEADLINE if t == task]
    for name, res in baselines(config, task, dataset, max_examples).items():
      for metric in metrics:
        v = res[metric]
        out[f"baseline/{task_key(task)}/{name}/{metric}"] = (
            float(v) if v is not None else float("nan"))
  return out
