"""Writes a picture of augmented training examples: (input | target) per task.

Usage:
  python -m input_pipeline.preview --config configs/upocr.py:tiny --out grid.png
  python -m input_pipeline.preview --config configs/upocr.py:paper \
      --set data.text_removal.root=/data/SCUT-ENS --per_task 4 --out grid.png

One row per task (text removal, tampered text detection, text segmentation),
each cell the augmented input beside its target; ignore pixels are drawn grey as
in the target itself.
"""

import argparse
import ast
import importlib.util
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from input_pipeline import pipeline
from input_pipeline import schema


def load_config(spec: str, overrides: Sequence[str] = ()) -> Any:
  """Loads `path.py[:arg]` (a config file with get_config) and applies a=b."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: config file not found")
  mod_spec = importlib.util.spec_from_file_location("_preview_config", path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  for item in overrides:
    key, _, value = item.partition("=")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      pass  # A bare string.
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


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


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/upocr.py:tiny",
                      help="config file[:variant]")
  parser.add_argument("--set", action="append", default=[],
                      help="override, e.g. data.image_size=128 (repeatable)")
  parser.add_argument("--out", required=True, help="output .png")
  parser.add_argument("--per_task", type=int, default=4)
  parser.add_argument("--cell", type=int, default=128, help="cell side (px)")
  args = parser.parse_args(argv)
  config = load_config(args.config, args.set)
  data = config.data
  data.worker_count = 0
  for key in schema.TASK_KEYS:
    data[key].batch_size = args.per_task
  batch = next(pipeline.create_train_iterator(config))
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  make_grid(batch, args.per_task, args.cell).save(args.out, optimize=True)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
