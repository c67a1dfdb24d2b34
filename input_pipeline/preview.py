"""Writes a picture of augmented training examples: (input | target) per task.

Usage: python -m input_pipeline.preview --out=FILE.png [--config=CONFIG]
    [--config.FIELD=VALUE ...] [--per_task=4] [--cell=128]

Examples:
  python -m input_pipeline.preview --config=tiny --out=grid.png
  python -m input_pipeline.preview --config=paper \\
      --config.data.text_removal.root=/data/SCUT-ENS --per_task=4 --out=grid.png

One row per task (text removal, tampered text detection, text segmentation),
each cell the augmented input beside its target; ignore pixels are drawn grey as
in the target itself.
"""

import os
from typing import Sequence

from absl import flags
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from input_pipeline import pipeline
from input_pipeline import schema
from upocr_jax import cli_flags


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the preview's flags on ``fv`` (``--config.*`` overrides looked
  up in ``argv``, default sys.argv)."""
  cli_flags.DEFINE_config(fv, argv, default="tiny",
                          help_string="Config whose data section is drawn")
  flags.DEFINE_string("out", None, "Output .png.", flag_values=fv)
  flags.DEFINE_integer("per_task", 4, "Examples per task.", flag_values=fv)
  flags.DEFINE_integer("cell", 128, "Side of each drawn image, in pixels.",
                       flag_values=fv)


def make_grid(batch: dict, per_task: int, cell: int) -> Image.Image:
  """Lays out per_task (input | target) pairs per task, one row per task."""
  label_w, pad = 200, 4
  rows = []
  font = ImageFont.load_default(size=14)
  for t, task in enumerate(schema.TASKS):
    idx = np.flatnonzero(np.asarray(batch["task_id"]) == t)[:per_task]
    row = Image.new("RGB", (label_w + per_task * (2 * cell + 3 * pad),
                            cell + 2 * pad), "white")
    ImageDraw.Draw(row).text((4, cell // 2 - 8), task, fill="black", font=font)
    for j, i in enumerate(idx):
      x = label_w + j * (2 * cell + 3 * pad)
      for k, key in enumerate(("image", "target")):
        a = np.asarray(batch[key][i])
        if a.dtype != np.uint8:
          a = (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        img = Image.fromarray(a).resize((cell, cell), Image.Resampling.NEAREST)
        row.paste(img, (x + k * (cell + pad), pad))
    rows.append(row)
  grid = Image.new("RGB", (rows[0].size[0], sum(r.size[1] for r in rows)),
                   "white")
  y = 0
  for r in rows:
    grid.paste(r, (0, y))
    y += r.size[1]
  return grid


def main(argv: Sequence[str], fv: flags.FlagValues | None = None) -> str:
  """Writes the preview; ``argv`` has the program name first. Flags are
  parsed into a fresh FlagValues unless ``fv`` (parsed) is given."""
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  cli_flags.require(fv, "out")
  # A copy: the flag's config is locked, and the preview changes a few fields.
  config = fv.config.copy_and_resolve_references()
  data = config.data
  data.worker_count = 0
  for key in schema.TASK_KEYS:
    data[key].batch_size = fv.per_task
  batch = next(pipeline.create_train_iterator(config))
  out_dir = os.path.dirname(os.path.abspath(fv.out))
  os.makedirs(out_dir, exist_ok=True)
  make_grid(batch, fv.per_task, fv.cell).save(fv.out, optimize=True)
  print(f"wrote {fv.out}")
  return fv.out


if __name__ == "__main__":
  cli_flags.run("input_pipeline.preview", __doc__, define_flags, main)
