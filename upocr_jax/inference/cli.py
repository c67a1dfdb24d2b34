"""upocr-predict: run a checkpoint on image files and folders.

Usage: upocr-predict --checkpoint=DIR --task=TASK --output_dir=OUT INPUT...
    [--mode=resize|tiled] [--batch_size=8] [--image_size=512] [--overlap=N]
    [--config=CONFIG]

Examples:
  upocr-predict --checkpoint=/tmp/upocr_tiny --task="text removal" \\
      --output_dir=out photo.jpg scans/
  upocr-predict --checkpoint=weights/upocr_paper --task=text_segmentation \\
      --mode=tiled --output_dir=out page.png

INPUTs are image files or folders (searched recursively for every extension PIL
reads; sub-folders are mirrored under OUT). Written per input NAME:

* text removal: ``NAME.png``, the text-free image;
* text segmentation: ``NAME_mask.png`` (white text) and ``NAME_overlay.png``;
* tampered text detection: ``NAME_tamper.png`` (R background, G real, B
  tampered), ``NAME_overlay.png`` and ``NAME_regions.json``.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from absl import flags
import numpy as np
from PIL import Image
from tqdm import tqdm

from upocr_jax import cli_flags, tasks
from upocr_jax.inference import postprocess
from upocr_jax.inference import runner
from upocr_jax.inference.predictor import MODES, Predictor, load_image
from upocr_jax.weights import weight_dir


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the flags of ``upocr-predict`` on ``fv``.

  ``--config.*`` overrides are looked up in ``argv`` (default sys.argv).
  """
  flags.DEFINE_string("checkpoint", None, "Weight directory, or a training "
                      "workdir (its latest checkpoint).", flag_values=fv)
  flags.DEFINE_string("task", None, "'text removal', 'text segmentation' or "
                      "'tampered text detection'.", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where the outputs go.",
                      flag_values=fv)
  flags.DEFINE_enum("mode", "resize", MODES, "resize: to the model size and "
                    "back (paper); tiled: native resolution, blended tiles.",
                    flag_values=fv)
  flags.DEFINE_integer("batch_size", 8, "Images (resize) or tiles (tiled) per "
                       "model call.", flag_values=fv)
  flags.DEFINE_integer("image_size", None, "Model size (default: the size "
                       "the checkpoint was trained/saved at, else the "
                       "config's data.image_size, else 512).", flag_values=fv)
  flags.DEFINE_integer("overlap", None, "Minimum tile overlap in pixels "
                       "(default image_size // 4).", flag_values=fv)
  flags.DEFINE_float("seg_threshold", tasks.SEG_THRESHOLD, "Text where "
                     "the segmentation map's channel mean exceeds this.",
                     flag_values=fv)
  flags.DEFINE_integer("min_region_area", 16, "Smallest tampered/real region "
                       "reported, in pixels.", flag_values=fv)
  cli_flags.DEFINE_config(fv, argv, help_string="Optional config; the "
                          "checkpoint must match its model")


def _image_extensions() -> set[str]:
  return {e.lower() for e, fmt in Image.registered_extensions().items()
          if fmt in Image.OPEN}


def collect_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
  """(path, output stem relative to OUT) for every image of files/folders.

  Raises:
    ValueError / FileNotFoundError: no inputs, a missing path, a folder without
      images, or two inputs that would write the same output.
  """
  if not inputs:
    raise ValueError("no input: give image files and/or folders after the flags")
  exts = _image_extensions()
  found = []
  for inp in inputs:
    if os.path.isdir(inp):
      n0 = len(found)
      for root, dirs, files in os.walk(inp):
        dirs.sort()
        for f in sorted(files):
          if os.path.splitext(f)[1].lower() in exts:
            path = os.path.join(root, f)
            found.append((path, os.path.splitext(os.path.relpath(path, inp))[0]))
      if len(found) == n0:
        raise ValueError(f"{inp}: folder contains no image files")
    elif os.path.isfile(inp):
      found.append((inp, os.path.splitext(os.path.basename(inp))[0]))
    else:
      raise FileNotFoundError(f"{inp}: no such file or folder")
  seen = {}
  for path, stem in found:
    if stem in seen:
      raise ValueError(f"{seen[stem]} and {path} would both write output "
                       f"{stem!r}; pass them in separate runs")
    seen[stem] = path
  return found


def _save_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(image).save(path)


def write_outputs(out_dir: str, stem: str, image: np.ndarray,
                  output_map: np.ndarray, task: str,
                  predictor: Predictor) -> list[str]:
  """Writes the files of one input (see the module docstring); their paths."""
  base = os.path.join(out_dir, stem)
  result = predictor.finish(output_map, task)
  if task == tasks.TASKS[tasks.TAMPERED]:
    tamper_map, regions = result
    classes = postprocess.tamper_classes(output_map)
    files = {base + "_tamper.png": tamper_map,
             base + "_overlay.png": postprocess.tamper_overlay(image, classes,
                                                               regions)}
    for p, im in files.items():
      _save_png(p, im)
    with open(base + "_regions.json", "w") as f:
      json.dump({"image_size": [image.shape[1], image.shape[0]],
                 "box_format": "x_min, y_min, x_max, y_max (inclusive)",
                 "regions": regions}, f, indent=1)
    return list(files) + [base + "_regions.json"]
  if task == tasks.TASKS[tasks.SEGMENTATION]:
    mask = postprocess.text_mask(output_map, predictor.seg_threshold)
    files = {base + "_mask.png": (mask * np.uint8(255)).astype(np.uint8),
             base + "_overlay.png": postprocess.segmentation_overlay(image, mask)}
  else:
    files = {base + ".png": result}
  for p, im in files.items():
    _save_png(p, im)
  return list(files)


def main(argv: Sequence[str], fv: flags.FlagValues | None = None) -> list[str]:
  """Runs ``upocr-predict`` with ``argv`` (program name first); written files.

  Flags are parsed into a fresh FlagValues unless ``fv`` (already parsed) is
  given, so tests and notebooks can call this repeatedly.
  """
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  cli_flags.require(fv, "checkpoint", "task", "output_dir")
  # Cheap checks first: the task against the checkpoint's config, the inputs.
  saved = weight_dir.read_model_config(
      runner.resolve_weights_dir(fv.checkpoint))
  task = tasks.canonical_task(fv.task, list(saved.tasks))
  inputs = collect_inputs(list(argv[1:]))
  predictor = Predictor.from_checkpoint(
      fv.checkpoint, mode=fv.mode, image_size=fv.image_size, config=fv.config,
      batch_size=fv.batch_size, overlap=fv.overlap,
      seg_threshold=fv.seg_threshold, min_region_area=fv.min_region_area)
  written = []
  # A chunk of batch_size images per step: full model batches in resize mode,
  # bounded host memory in tiled mode.
  step = predictor.batch_size
  with tqdm(total=len(inputs), desc=f"upocr-predict {task}", unit="img") as bar:
    for i in range(0, len(inputs), step):
      chunk = inputs[i:i + step]
      images = [load_image(p) for p, _ in chunk]
      maps = predictor.predict_maps(images, task)
      for (_, stem), image, m in zip(chunk, images, maps):
        written += write_outputs(fv.output_dir, stem, image, m, task, predictor)
      bar.update(len(chunk))
  print(f"wrote {len(written)} files for {len(inputs)} images to "
        f"{fv.output_dir}")
  return written


def run_main() -> None:
  """Console entry point (``upocr-predict``)."""
  cli_flags.run("upocr-predict", __doc__, define_flags, main)


if __name__ == "__main__":
  run_main()
