"""Writes a synthetic data set in the three official folder layouts.

Usage: python -m input_pipeline.write_synthetic --out=DIR [--config=CONFIG]
    [--config.data.synthetic.FIELD=VALUE ...] [--num_train=64] [--num_test=16]

Examples:
  python -m input_pipeline.write_synthetic --out=/tmp/synth
  python -m input_pipeline.write_synthetic --out=/tmp/synth --num_train=8 \\
      --config=tiny --config.data.synthetic.min_size=256 --lossless

The generator (seed, min_size/max_size of the raw sides, max_words, fonts_dir,
photos_dir) is the config's ``data.synthetic``, as for on-the-fly synthetic
training data; the flags give the number of examples written.

Creates, under --out:
  SCUT-EnsText/{train,test}/{image,label,mask}/syn_NNNNN.jpg
  TextSeg/image/syn_NNNNN.jpg, TextSeg/semantic_label/syn_NNNNN_maskfg.png,
  TextSeg/split.json (train / val / test)
  Tampered-IC13/{train,test}_img/syn_NNNNN.jpg, {train,test}_gt/syn_NNNNN.txt
so the folder readers and TFDS builders can run on it.
"""

import json
import os
from typing import Sequence

from absl import flags
import numpy as np
from PIL import Image

from input_pipeline import schema
from input_pipeline import synthetic
from upocr_jax import cli_flags


def _save(array: np.ndarray, path: str, quality: int) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img = Image.fromarray(array)
  if path.endswith(".jpg"):
    img.save(path, quality=quality)
  else:
    img.save(path)


def write_dataset(out_dir: str, num_train: int, num_test: int, seed: int = 0,
                  params: synthetic.SynthParams | None = None,
                  num_val: int | None = None, lossless: bool = False,
                  quality: int = 95) -> dict[str, str]:
  """Writes the three data sets; returns {task key: dataset root}.

  Args:
    out_dir: output folder (created).
    num_train, num_test: examples per split (TextSeg also gets num_val).
    seed: generator seed; the train and test splits use disjoint streams.
    params: generator size range / fonts / photos.
    num_val: TextSeg val split size (default max(1, num_train // 4)).
    lossless: write SCUT-EnsText and Tampered-IC13 images as PNG instead of
      JPEG (the readers accept both), so tests can compare pixels exactly.
    quality: JPEG quality.
  """
  params = params or synthetic.SynthParams()
  num_val = max(1, num_train // 4) if num_val is None else num_val
  ext = ".png" if lossless else ".jpg"
  roots = {key: os.path.join(out_dir, name) for key, name in zip(
      schema.TASK_KEYS, ("SCUT-EnsText", "Tampered-IC13", "TextSeg"))}

  def source(task_id, split, n):
    return synthetic.SyntheticSource(task_id, n, seed, split, params)

  # SCUT-EnsText.
  for split, n in (("train", num_train), ("test", num_test)):
    src = source(schema.TEXT_REMOVAL, split, n)
    for i in range(n):
      raw = src.raw(i)
      for key, sub in (("image", "image"), ("label", "label"), ("mask", "mask")):
        _save(raw[key], os.path.join(roots["text_removal"], split, sub,
                                     f"syn_{i:05d}{ext}"), quality)
  # Tampered-IC13.
  for split, n in (("train", num_train), ("test", num_test)):
    src = source(schema.TAMPERED, split, n)
    gt_dir = os.path.join(roots["tampered_text_detection"], f"{split}_gt")
    os.makedirs(gt_dir, exist_ok=True)
    for i in range(n):
      raw = src.raw(i)
      _save(raw["image"], os.path.join(roots["tampered_text_detection"],
                                       f"{split}_img", f"syn_{i:05d}{ext}"),
            quality)
      with open(os.path.join(gt_dir, f"syn_{i:05d}.txt"), "w",
                encoding="utf-8") as f:
        f.write("".join(",".join(str(int(v)) for v in row) + "\n"
                        for row in raw["boxes"]))
  # TextSeg: one image/label folder, splits listed in split.json.
  split_names: dict[str, list[str]] = {}
  for split, n in (("train", num_train), ("val", num_val), ("test", num_test)):
    src = source(schema.SEGMENTATION, split, n)
    split_names[split] = []
    for i in range(n):
      raw = src.raw(i)
      name = f"syn_{split}_{i:05d}"
      _save(raw["image"], os.path.join(roots["text_segmentation"], "image",
                                       name + ".jpg"),
            100 if lossless else quality)
      _save(raw["label"], os.path.join(roots["text_segmentation"],
                                       "semantic_label", name + "_maskfg.png"),
            quality)
      split_names[split].append(name)
  with open(os.path.join(roots["text_segmentation"], "split.json"), "w",
            encoding="utf-8") as f:
    json.dump(split_names, f, indent=1)
  return roots


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the writer's flags on ``fv`` (``--config.*`` overrides looked up
  in ``argv``, default sys.argv)."""
  cli_flags.DEFINE_config(fv, argv, default="paper", help_string="Config "
                          "whose data.synthetic is the generator")
  flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)
  flags.DEFINE_integer("num_train", 64, "Examples in each train split.",
                       flag_values=fv)
  flags.DEFINE_integer("num_test", 16, "Examples in each test split.",
                       flag_values=fv)
  flags.DEFINE_integer("num_val", None, "TextSeg val examples (default "
                       "max(1, num_train // 4)).", flag_values=fv)
  flags.DEFINE_boolean("lossless", False, "PNG instead of JPEG for the "
                       "SCUT-EnsText and Tampered-IC13 images.",
                       flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues | None = None
         ) -> dict[str, str]:
  """Writes the data sets; ``argv`` has the program name first. Flags are
  parsed into a fresh FlagValues unless ``fv`` (parsed) is given. Returns
  {task key: dataset root}."""
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  cli_flags.require(fv, "out")
  s = fv.config.data.synthetic
  params = synthetic.SynthParams(s.min_size, s.max_size, s.max_words,
                                 s.fonts_dir or None, s.photos_dir or None)
  roots = write_dataset(fv.out, fv.num_train, fv.num_test, s.seed, params,
                        fv.num_val, fv.lossless)
  for key, root in roots.items():
    print(f"{key}: {root}")
  return roots


if __name__ == "__main__":
  cli_flags.run("input_pipeline.write_synthetic", __doc__, define_flags, main)
