"""Evaluation on the three benchmarks (or held-out synthetic data) as the paper did.

Library: :func:`evaluate` (one task of one data set), :func:`evaluate_dataset`
(every task of a data set) and :func:`run_evals` (what ``config.evals`` asks for,
as flat metric names for the training logs). Command line: ``upocr-eval``
(``upocr_jax.evaluation.cli``).

Protocol, following the official evaluation (engine/val.py and the SCUT-EnsText
script): images resized to ``config.data.image_size`` (bicubic), the model's
full-resolution output clamped to [0, 1], then

* text removal: the output quantised as the official code saved it
  (``(x * 255).astype(uint8)``) and compared at the model size with the ground
  truth resized the same way (SCUT-EnsText test images are 512x512 already, so
  this is the original resolution for the paper's setting); FID (pytorch-fid's
  pipeline, see upocr_jax.evaluation.fid) only with ``--inception_weights``;
* text segmentation / tampered text detection: the float output resized
  bilinearly to the label's original size inside the metrics (threshold
  ``tasks.SEG_THRESHOLD`` = 0.4 on the channel mean / argmax over channels),
  one confusion matrix per set.

Data sets: ``scut_enstext``, ``textseg``, ``tampered_ic13`` read the task's source
as ``config.data.<task>`` configures it (folder or TFDS); ``synthetic`` evaluates
all three tasks on the held-out synthetic split (``config.data.synthetic``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Callable, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec as P
import ml_collections
import numpy as np
from PIL import Image

from input_pipeline import pipeline
from upocr_jax import sharding
from upocr_jax.evaluation import metrics as metrics_lib
from upocr_jax.inference import image_ops
from upocr_jax.inference import runner
from upocr_jax.models import UPOCR
from upocr_jax.tasks import (EVAL_DATASETS, SEG_THRESHOLD, SEGMENTATION, TASKS,
                             TEXT_REMOVAL, canonical_task, task_key)

DATASETS = EVAL_DATASETS
NON_METRICS = ("num_images", "num_skipped_identical", "num_skipped",
                "threshold")


def dataset_config(config: ml_collections.ConfigDict, task: str,
                   dataset: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` whose data section reads ``dataset`` for ``task``."""
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of "
                     + ", ".join(DATASETS))
  if task not in DATASETS[dataset]:
    raise ValueError(f"dataset {dataset!r} has no {task!r} labels; it "
                     f"evaluates {list(DATASETS[dataset])}")
  cfg = ml_collections.ConfigDict(config.to_dict())
  key = task_key(task)
  if dataset == "synthetic":
    cfg.data[key].source = "synthetic"
  elif cfg.data[key].source == "synthetic":
    raise ValueError(
        f"--dataset {dataset}: config.data.{key}.source is 'synthetic'; set "
        f"--config.data.{key}.source=folder and --config.data.{key}.root=... "
        "(or source=tfds) to evaluate on the real data, or use --dataset "
        "synthetic")
  return cfg


def _put(x: np.ndarray, mesh: Optional[Mesh], spec: P):
  if mesh is None:
    return x
  return multihost_utils.host_local_array_to_global_array(x, mesh, spec)


def _get(x, mesh: Optional[Mesh], spec: P) -> np.ndarray:
  if mesh is None:
    return np.asarray(x)
  return np.asarray(multihost_utils.global_array_to_host_local_array(
      x, mesh, spec))


def _merge_processes(acc) -> None:
  """Adds the other processes' counts to ``acc`` (each saw its own examples)."""
  if jax.process_count() == 1:
    return
  if getattr(acc, "feature_extractor", None) is not None:
    acc.set_features(*map(_gather_rows, acc.features()))
  me = jax.process_index()
  others = {k: np.delete(np.asarray(multihost_utils.process_allgather(
      np.asarray(v))), me, axis=0).sum(0) for k, v in acc.counts().items()}
  acc.merge(others)


def _gather_rows(x: np.ndarray) -> np.ndarray:
  """Every process's (n_p, D) rows, concatenated (n_p may differ; n_p=0 ok)."""
  shapes = np.asarray(multihost_utils.process_allgather(
      np.asarray(x.shape, np.int64))).reshape(-1, 2)
  n, d = int(shapes[:, 0].max()), int(shapes[:, 1].max())
  padded = np.zeros((n, d), np.float64)
  padded[:x.shape[0], :x.shape[1]] = x
  rows = np.asarray(multihost_utils.process_allgather(padded)).reshape(-1, n, d)
  return np.concatenate([r[:k] for r, k in zip(rows, shapes[:, 0])])


def _gather_strings(items: Sequence[str]) -> list[str]:
  """Every process's strings, in process order."""
  if jax.process_count() == 1:
    return list(items)
  # One row of bytes per process (a leading marker keeps it non-empty).
  row = np.frombuffer(b"#" + "\n".join(items).encode(), np.uint8)
  out = []
  for r in _gather_rows(row[None, :].astype(np.float64)):
    text = bytes(r.astype(np.uint8)).rstrip(b"\0")[1:].decode()
    out += text.split("\n") if text else []
  return out


def _stem(name: str) -> str:
  return os.path.splitext(os.path.basename(name.split(":")[-1]))[0]


def evaluate(model: UPOCR, config: ml_collections.ConfigDict, task: str,
             dataset: str, max_examples: int = -1,
             save_dir: Optional[str] = None, progress: bool = True,
             mesh: Optional[Mesh] = None,
             batch_axes: Optional[Sequence[str]] = None,
             mssim_mode: str = "official",
             seg_threshold: float = SEG_THRESHOLD,
             feature_extractor: Optional[Callable[[np.ndarray],
                                                  np.ndarray]] = None) -> dict:
  """Evaluates ``model`` on one task of a data set; returns the metrics dict.

  Args:
    model: the UPOCR model (on ``mesh``, replicated or sharded, when given).
    config: the full config (data settings, ``data.eval_batch_size``).
    task: task name (or key) as in ``config.model.tasks``.
    dataset: 'scut_enstext', 'textseg', 'tampered_ic13' or 'synthetic'.
    max_examples: only the first N examples (-1: all).
    save_dir: if set, predictions are written as PNG to ``save_dir/<task_key>/
      <input name>.png`` (text removal at the model size, maps at label size).
    progress: show a progress bar (process 0 only).
    mesh: shard the batch over ``batch_axes`` of this mesh (the global eval
      batch must divide by their size); required with several processes.
    batch_axes: mesh axes the batch is split over (default: the first axis).
    mssim_mode, seg_threshold, feature_extractor: see upocr_jax.evaluation.metrics.
  Returns:
    The metrics of upocr_jax.evaluation.metrics (TextRemovalMetrics / SegmentationMetrics
    / TamperMetrics ``result()``) plus 'task' and 'dataset'. With
    ``config.data.skip_bad_examples`` also 'num_skipped' and 'skipped' (the
    "FILE: problem" lines of the examples left out; ``num_images`` counts
    only the scored ones).
  """
  task = canonical_task(task, list(model.config.tasks))
  task_id = TASKS.index(task)
  cfg = dataset_config(config, task, dataset)
  if mesh is None and jax.process_count() > 1:
    raise ValueError("evaluate: pass the mesh when running on several processes")
  spec, axes = None, ()
  if mesh is not None:
    axes = tuple(batch_axes or mesh.axis_names[:1])
    spec = P(axes)
    n = sharding.batch_shard_count(mesh.shape, axes)
    if cfg.data.eval_batch_size % n:
      raise ValueError(f"config.data.eval_batch_size={cfg.data.eval_batch_size}"
                       f" must be a multiple of mesh axes {axes} ({n} "
                       "devices)")
  model_task_id = list(model.config.tasks).index(task)
  ds, steps = pipeline.create_eval_dataset(
      cfg, task_id, jax.process_index(), jax.process_count(),
      max_examples)
  if task_id == TEXT_REMOVAL:
    acc = metrics_lib.TextRemovalMetrics(mssim_mode, feature_extractor)
  elif task_id == SEGMENTATION:
    acc = metrics_lib.SegmentationMetrics(seg_threshold)
  else:
    acc = metrics_lib.TamperMetrics()
  out_dir = None
  if save_dir:
    out_dir = os.path.join(save_dir, task_key(task))
    os.makedirs(out_dir, exist_ok=True)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm(total=steps, desc=f"eval {dataset}/{task_key(task)}",
             disable=not progress or jax.process_index() != 0)

  skipped = []

  def consume(batch, out):
    out = _get(out, mesh, spec)
    skipped.extend(s for s in batch["skipped"] if s)
    for i in np.nonzero(batch["example_mask"])[0]:
      if task_id == TEXT_REMOVAL:
        pred = image_ops.to_uint8_like_official(out[i])
        acc.update(pred, batch["target"][i])
      else:
        acc.update(out[i], batch["orig_target"][i])
        if out_dir:
          h, w = batch["orig_target"][i].shape[:2]
          pred = image_ops.to_uint8_like_official(
              image_ops.resize_bilinear(out[i], h, w))
      if out_dir:
        name = _stem(batch["name"][i])
        Image.fromarray(pred).save(os.path.join(out_dir, name + ".png"))
    bar.update(1)

  pending = None
  run = runner.forward_fn(model)
  with (sharding.mesh_context(mesh, sharding.activation_rules(config, axes))
        if mesh is not None
        else contextlib.nullcontext()):
    for batch in ds:
      ids = np.full(len(batch["image"]), model_task_id, np.int32)
      # Dispatch is asynchronous: the device runs this batch while the host
      # computes the metrics of the previous one.
      out = run(_put(batch["image"], mesh, spec), _put(ids, mesh, spec))
      if pending is not None:
        consume(*pending)
      pending = (batch, out)
  if pending is not None:
    consume(*pending)
  bar.close()
  _merge_processes(acc)
  result = acc.result()
  result.update(task=task, dataset=dataset)
  if cfg.data.get("skip_bad_examples", False):
    skipped = _gather_strings(skipped)
    for s in skipped:
      logging.warning("eval %s/%s: skipped %s", dataset, task_key(task), s)
    result.update(num_skipped=len(skipped), skipped=skipped)
  return result


def evaluate_dataset(model: UPOCR, config: ml_collections.ConfigDict,
                     dataset: str, tasks: Optional[Sequence[str]] = None,
                     **kwargs) -> dict[str, dict]:
  """:func:`evaluate` on each task of ``dataset`` (or ``tasks``): {task: metrics}."""
  tasks = DATASETS.get(dataset, ()) if tasks is None else tasks
  if dataset not in DATASETS:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of "
                     + ", ".join(DATASETS))
  return {t: evaluate(model, config, t, dataset, **kwargs) for t in tasks}


def flatten_metrics(results: dict[str, dict], dataset: str) -> dict[str, float]:
  """{task: metrics} -> {'eval/<task_key>/<metric>': value} (numbers only).

  Synthetic results are named 'eval/synthetic/<task_key>/<metric>' so they never
  mix with the benchmarks'.
  """
  prefix = "eval/synthetic/" if dataset == "synthetic" else "eval/"
  flat = {}
  for task, res in results.items():
    for k, v in res.items():
      if (k not in NON_METRICS and isinstance(v, (int, float))
          and not isinstance(v, bool)):
        flat[f"{prefix}{task_key(task)}/{k}"] = float(v)
  return flat


def run_evals(model: UPOCR, config: ml_collections.ConfigDict, step: int,
              mesh: Optional[Mesh] = None,
              batch_axes: Optional[Sequence[str]] = None) -> dict[str, float]:
  """The evaluations ``config.evals`` asks for, as flat metric names.

  ``mesh`` / ``batch_axes``: as in :func:`evaluate` (the train loop passes its
  mesh and data axes; the model stays sharded as it is).

  ``config.evals`` fields (all optional): ``datasets`` (list, or comma
  separated string; default ['synthetic']), ``max_examples`` (-1),
  ``mssim_mode`` ('official'), ``seg_threshold`` (``SEG_THRESHOLD``).
  """
  ev = config.get("evals", None) or ml_collections.ConfigDict()
  datasets = ev.get("datasets", ["synthetic"])
  if isinstance(datasets, str):
    datasets = [d.strip() for d in datasets.split(",") if d.strip()]
  flat = {}
  for ds in datasets:
    res = evaluate_dataset(
        model, config, ds, max_examples=ev.get("max_examples", -1),
        progress=False, mesh=mesh, batch_axes=batch_axes, mssim_mode=ev.get("mssim_mode", "official"),
        seg_threshold=ev.get("seg_threshold", SEG_THRESHOLD))
    flat.update(flatten_metrics(res, ds))
  logging.info("step %d: %s", step, ", ".join(
      f"{k}={v:.4g}" for k, v in sorted(flat.items())))
  return flat


# ----------------------------------------------------------------------- CLI
