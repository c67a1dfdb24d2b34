"""``upocr-eval``: the command line of evaluation (also ``python -m upocr_jax.evaluation.cli``).

The evaluation itself (loop, protocol, metrics per data set) is
``upocr_jax.evaluation.evaluate``; this module parses flags, checks the output
folder, puts the model on the configured mesh, and prints and writes the report.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from absl import flags, logging
import jax
from jax.sharding import Mesh
import ml_collections

from upocr_jax import cli_flags
from upocr_jax import sharding
from upocr_jax.evaluation import evaluate
from upocr_jax.evaluation import fid
from upocr_jax.fit import infer_report
from upocr_jax.inference import runner
from upocr_jax.models import UPOCR
from upocr_jax.tasks import (EVAL_DATASETS, SEG_THRESHOLD, TASKS, TEXT_REMOVAL,
                             canonical_task)


USAGE = """upocr-eval: evaluate a checkpoint as the paper did.

Usage: upocr-eval --config=CONFIG --checkpoint=DIR --dataset=DATASET [flags]

Examples:
  upocr-eval --config=tiny --checkpoint=/tmp/upocr_tiny --dataset=synthetic
  upocr-eval --config=paper --checkpoint=weights/upocr_paper \\
      --dataset=scut_enstext --config.data.text_removal.source=folder \\
      --config.data.text_removal.root=/data/SCUT-ENS \\
      --inception_weights=inception_fid.npz --save_predictions

Writes OUTPUT_DIR/metrics.json (default CHECKPOINT/eval/DATASET) and prints a
table. Data sets: scut_enstext, textseg, tampered_ic13 (read as config.data
configures the task's source) or synthetic (all three tasks, held-out split).

Will a batch fit? --compile_only compiles the evaluation forward for
config.data.eval_batch_size images of config.data.image_size on ONE chip
(a slice gives each chip its share of the batch) and reports memory per chip,
FLOPs and a roofline estimate; no checkpoint or data is read. With libtpu
(pip install -e '.[tpu]'; no TPU needed):
  upocr-eval --config=paper --compile_only --topology=v5e:2x2 \\
      --config.data.eval_batch_size=32 --suggest
"""


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the flags of ``upocr-eval`` on ``fv``.

  ``--config.*`` overrides are looked up in ``argv`` (default sys.argv).
  """
  cli_flags.DEFINE_config(fv, argv, help_string="Config whose model matches "
                          "the checkpoint and whose data section is read")
  flags.DEFINE_string("checkpoint", None, "Weight directory, or a training "
                      "workdir (its latest checkpoint).", flag_values=fv)
  flags.DEFINE_enum("dataset", None, list(EVAL_DATASETS), "Data set to evaluate.",
                    flag_values=fv)
  flags.DEFINE_string("task", None, "Only this task (default: every task of "
                      "the data set).", flag_values=fv)
  flags.DEFINE_boolean("save_predictions", False, "Write the predictions as "
                       "PNG under OUTPUT_DIR/predictions.", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where metrics.json (and predictions)"
                      " go; default CHECKPOINT/eval/DATASET.", flag_values=fv)
  flags.DEFINE_integer("max_examples", -1, "Only the first N examples per "
                       "task (-1: all).", flag_values=fv)
  flags.DEFINE_enum("mssim_mode", "official", ["official", "standard"],
                    "official: the public script (published numbers); "
                    "standard: real multi-scale SSIM.", flag_values=fv)
  flags.DEFINE_float("seg_threshold", SEG_THRESHOLD, "Text segmentation "
                     "threshold.",
                     flag_values=fv)
  flags.DEFINE_string("inception_weights", None, "pytorch-fid's FID Inception "
                      "weights (.pth, or the .npz of upocr-convert "
                      "--inception): report FID too.", flag_values=fv)
  flags.DEFINE_integer("fid_batch_size", 32, "Images per Inception call.",
                       flag_values=fv)
  cli_flags.DEFINE_compile_only(
      fv, "Compile the evaluation forward for config.data.eval_batch_size "
      "images on one chip, report memory, FLOPs and a roofline estimate, and "
      "stop (no --checkpoint or --dataset read).", "if the batch does not "
      "fit, halve it until one fits.")


def eval_mesh(model: UPOCR, config: ml_collections.ConfigDict
              ) -> tuple[Mesh, ml_collections.ConfigDict]:
  """The mesh of ``config.mesh`` with ``model`` sharded as training shards it
  (data parallel over all devices without a mesh section), and a copy of
  ``config`` whose ``data.eval_batch_size`` is rounded up to a multiple of
  the batch shards (the extra positions are padding, masked out)."""
  mesh, par = runner.place_on_mesh(model, config)
  return mesh, _eval_config(config, mesh, par)


def _eval_config(config: ml_collections.ConfigDict, mesh: Mesh,
                 par: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with ``par``'s sharding section and the eval batch rounded up
  to a multiple of the batch shards of ``mesh``."""
  n = sharding.num_batch_shards(mesh, par)
  config = ml_collections.ConfigDict(config.to_dict())
  if "sharding" not in config:
    config.sharding = par.sharding
  size = config.data.eval_batch_size
  if size % n:
    logging.warning("config.data.eval_batch_size %d does not divide over %d "
                    "batch shards: using %d", size, n, -(-size // n) * n)
    config.data.eval_batch_size = -(-size // n) * n
  return config


def _clean(v: Any) -> Any:
  # Standard JSON has no NaN/inf (e.g. a class absent from the whole set).
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


def format_table(results: dict[str, dict]) -> str:
  """A plain-text table of the metrics (fractions also shown x100, as in the
  paper's tables)."""
  lines = [f"{'task':<26}{'metric':<22}{'value':>12}{'x100':>10}"]
  skipped = []
  for task, res in results.items():
    skipped += [f"  {task}: {s}" for s in res.get("skipped", ())]
    for k, v in res.items():
      if (k in ("task", "dataset") or v is None
          or isinstance(v, (str, list, tuple))):
        continue
      x100 = ("" if k in ("psnr", "age", "fid") or k in evaluate.NON_METRICS or
              isinstance(v, int) else f"{100 * v:10.2f}")
      lines.append(f"{task:<26}{k:<22}{v:>12.6g}{x100:>10}")
  if skipped:
    lines += ["skipped examples (left out of the metrics):"] + skipped
  return "\n".join(lines)


def main(argv: Sequence[str], fv: flags.FlagValues | None = None) -> dict:
  """Runs ``upocr-eval`` with ``argv`` (program name first); returns results
  (with ``--compile_only``: the fit report).

  Flags are parsed into a fresh FlagValues unless ``fv`` (already parsed) is
  given, so tests can call this repeatedly.
  """
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  if len(argv) > 1:
    raise cli_flags.UsageError(
        f"unexpected arguments: {' '.join(argv[1:])}")
  topology = cli_flags.compile_only_topology(fv)
  if topology is not None:
    cli_flags.require(fv, "config")
    if fv.checkpoint or fv.dataset:
      logging.warning("--compile_only reads no checkpoint or data: "
                      "--checkpoint and --dataset are not used")
    return infer_report.run(
        fv.config.model, infer_report.one_chip_parallel(fv.config),
        fv.config.data.eval_batch_size, fv.config.data.image_size, topology,
        fv.suggest, batch_flag="--config.data.eval_batch_size")
  cli_flags.require(fv, "config", "checkpoint", "dataset")
  out_dir = fv.output_dir or os.path.join(fv.checkpoint, "eval", fv.dataset)
  if jax.process_index() == 0:
    # Before any compute: a read-only checkpoint folder (the default place)
    # would otherwise fail after the whole evaluation.
    cli_flags.check_writable_dir(
        out_dir, "choose another --output_dir" if fv.output_dir else
        "the default is CHECKPOINT/eval/DATASET; pass --output_dir")
  # Restored straight into its shardings: never whole on one device.
  model, mesh, par = runner.load_on_mesh(fv.checkpoint, fv.config)
  config = _eval_config(fv.config, mesh, par)
  tasks = EVAL_DATASETS[fv.dataset]
  if fv.task:
    tasks = (canonical_task(fv.task, list(tasks)),)
  extractor = None
  if fv.inception_weights:
    if TASKS[TEXT_REMOVAL] in tasks:
      # Loaded before the evaluation, so bad weights fail before any work.
      extractor = fid.InceptionFeatureExtractor(
          fv.inception_weights, batch_size=fv.fid_batch_size)
    else:
      logging.warning("--inception_weights: FID is a text removal metric; "
                      "%s has none, ignoring it", fv.dataset)
  results = evaluate.evaluate_dataset(
      model, config, fv.dataset, tasks, max_examples=fv.max_examples,
      save_dir=(os.path.join(out_dir, "predictions") if fv.save_predictions
                else None),
      mesh=mesh, batch_axes=tuple(config.sharding.batch_axes),
      mssim_mode=fv.mssim_mode,
      seg_threshold=fv.seg_threshold, feature_extractor=extractor)
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    report = {"dataset": fv.dataset,
              "checkpoint": os.path.abspath(fv.checkpoint),
              "inception_weights": (os.path.abspath(fv.inception_weights)
                                    if extractor is not None else None),
              "results": {t: {k: _clean(v) for k, v in r.items()}
                          for t, r in results.items()}}
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(report, f, indent=1)
    print(format_table(results))
    print(f"wrote {os.path.join(out_dir, 'metrics.json')}")
  return results


def run_main() -> None:
  """Console entry point (``upocr-eval``)."""
  cli_flags.run("upocr-eval", USAGE, define_flags, main,
                user_errors=(ValueError, FileNotFoundError, ImportError))


if __name__ == "__main__":
  run_main()
