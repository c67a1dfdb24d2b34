"""upocr-predict: run a checkpoint on image files and folders.

Usage: upocr-predict --checkpoint=DIR --task=TASK --output_dir=OUT INPUT...
    [--mode=resize|tiled] [--batch_size=8] [--image_size=512] [--overlap=N]
    [--config=CONFIG] [--skip_bad_images]
    [--boxes="x1,y1,x2,y2;..." | --region_mask=MASK] [--feather=3]
       upocr-predict --config=CONFIG|--checkpoint=DIR --compile_only
    [--topology=NAME] [--batch_size=8] [--image_size=512] [--suggest]

Examples:
  upocr-predict --checkpoint=/tmp/upocr_tiny --task="text removal" \\
      --output_dir=out photo.jpg scans/
  upocr-predict --checkpoint=weights/upocr_paper --task=text_segmentation \\
      --mode=tiled --output_dir=out page.png
  upocr-predict --checkpoint=weights/upocr_paper --task="text removal" \\
      --boxes="10,20,200,80;0,400,640,480" --output_dir=out poster.jpg
  upocr-predict --config=paper --compile_only --topology=v6e:2x2 \\
      --batch_size=64 --suggest

INPUTs are image files or folders (searched recursively; sub-folders are
mirrored under OUT). NAME is the input's file name without its extension (with
it where two inputs in one folder share a NAME). Written per input NAME:

* text removal: ``NAME.png``, the text-free image;
* text segmentation: ``NAME_mask.png`` (white text) and ``NAME_overlay.png``;
* tampered text detection: ``NAME_tamper.png`` (R background, G real, B
  tampered), ``NAME_overlay.png`` and ``NAME_regions.json``.

Before any compute, every input is decoded once (a corrupt file stops the run
with the list of bad files; --skip_bad_images skips and lists them instead), OUT
must be writable, and no output may overwrite an input.

Only in a region (--boxes or --region_mask): text removal keeps every pixel
outside it as in the input (blended over --feather pixels); segmentation and
tampered detection find nothing outside it. A --region_mask folder holds a mask
per input at its output name (``MASKS/sub/NAME.png``; any image extension).
"""

from __future__ import annotations

import collections
import json
import os
from typing import Sequence

from absl import flags, logging
import numpy as np
from PIL import Image
from tqdm import tqdm

from upocr_jax import cli_flags, tasks
from upocr_jax.inference import postprocess
from upocr_jax.inference import regions
from upocr_jax.inference import runner
from upocr_jax.fit import infer_report
from upocr_jax.inference.predictor import (MODES, Predictor,
                                           default_image_size, load_image)
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
  flags.DEFINE_string("boxes", None, "Only in these boxes: 'x1,y1,x2,y2;...' "
                      "in pixels of the input (x2, y2 exclusive) or a .json "
                      "file with a list of [x1, y1, x2, y2].", flag_values=fv)
  flags.DEFINE_string("region_mask", None, "Only where this mask image is "
                      "non-zero (the input's size), or a folder of masks "
                      "named like the outputs (NAME.png for input NAME).",
                      flag_values=fv)
  flags.DEFINE_integer("feather", regions.DEFAULT_FEATHER, "Text removal in a "
                       "region: pixels of blend just inside its border (0: "
                       "hard edge).", flag_values=fv)
  flags.DEFINE_boolean("skip_bad_images", False, "Skip unreadable images "
                       "and list them at the end (default: decode every "
                       "input first and stop with the list of bad ones).",
                       flag_values=fv)
  cli_flags.DEFINE_config(fv, argv, help_string="Optional config; the "
                          "checkpoint must match its model")
  cli_flags.DEFINE_compile_only(
      fv, "Will a batch fit? Compile the model call for --batch_size images "
      "of --image_size on ONE chip of --topology, report memory, FLOPs and a "
      "roofline estimate, and stop (the model from --config, else the "
      "checkpoint's saved config; no weights or images read).", "if the batch does not fit, halve it "
      "until one fits.")


def _image_extensions() -> set[str]:
  return {e.lower() for e, fmt in Image.registered_extensions().items()
          if fmt in Image.OPEN}


def collect_inputs(inputs: Sequence[str]) -> list[tuple[str, str]]:
  """(path, output stem relative to OUT) for every image of files/folders.

  The stem is the path (relative to its folder input) without the extension,
  or with it when two inputs would otherwise share a stem (x.webp, x.tiff).

  Raises:
    ValueError / FileNotFoundError: no inputs, a missing path, a folder without
      images, or two inputs that would write the same output.
  """
  if not inputs:
    raise ValueError("no input: give image files and/or folders after the flags")
  exts = _image_extensions()
  found = []  # (path, output name with the extension)
  for inp in inputs:
    if os.path.isdir(inp):
      n0 = len(found)
      for root, dirs, files in os.walk(inp):
        dirs.sort()
        for f in sorted(files):
          if os.path.splitext(f)[1].lower() in exts:
            path = os.path.join(root, f)
            found.append((path, os.path.relpath(path, inp)))
      if len(found) == n0:
        raise ValueError(f"{inp}: folder contains no image files")
    elif os.path.isfile(inp):
      found.append((inp, os.path.basename(inp)))
    else:
      raise FileNotFoundError(f"{inp}: no such file or folder")
  plain = collections.Counter(os.path.splitext(n)[0] for _, n in found)
  named = [(path, os.path.splitext(n)[0] if plain[os.path.splitext(n)[0]] == 1
            else n) for path, n in found]
  seen = {}
  for path, stem in named:
    if stem in seen:
      raise ValueError(f"{seen[stem]} and {path} would both write output "
                       f"{stem!r}; pass them in separate runs")
    seen[stem] = path
  return named


def output_suffixes(task: str) -> tuple[str, ...]:
  """What ``write_outputs`` appends to an input's stem for ``task``."""
  if task == tasks.TASKS[tasks.TAMPERED]:
    return ("_tamper.png", "_overlay.png", "_regions.json")
  if task == tasks.TASKS[tasks.SEGMENTATION]:
    return ("_mask.png", "_overlay.png")
  return (".png",)


def check_no_overwrite(inputs: Sequence[tuple[str, str]], out_dir: str,
                       task: str) -> None:
  """Raises ValueError if an output of ``task`` would replace an input file.

  E.g. ``--output_dir`` equal to an input folder holding PNGs (text removal
  writes NAME.png), or inside one where an earlier run's outputs became inputs.
  """
  sources = {os.path.realpath(p): p for p, _ in inputs}
  for _, stem in inputs:
    for suffix in output_suffixes(task):
      out = os.path.realpath(os.path.join(out_dir, stem + suffix))
      if out in sources:
        raise ValueError(
            f"--output_dir={out_dir} would overwrite input {sources[out]} "
            f"(with the output of {task!r}); choose an --output_dir outside "
            "the input folders")


def check_images(inputs: Sequence[tuple[str, str]]) -> None:
  """Decodes every input; ValueError listing all the unreadable ones."""
  bad = []
  for path, _ in inputs:
    try:
      load_image(path)
    except (ValueError, FileNotFoundError) as e:
      bad.append(str(e))
  if bad:
    raise ValueError(f"{len(bad)} of {len(inputs)} input images are "
                     "unreadable (nothing was computed; --skip_bad_images "
                     "skips them): " + "; ".join(bad))


def find_region_masks(mask_dir: str, stems: Sequence[str]) -> list[str]:
  """The mask image of each output stem in ``mask_dir`` (``STEM.<ext>``).

  Raises:
    FileNotFoundError / ValueError: naming --region_mask and the stem that has
      no mask, or several.
  """
  exts = _image_extensions()
  masks = []
  for stem in stems:
    folder = os.path.join(mask_dir, os.path.dirname(stem))
    name = os.path.basename(stem)
    found = sorted(f for f in (os.listdir(folder) if os.path.isdir(folder)
                               else [])
                   if os.path.splitext(f)[0] == name
                   and os.path.splitext(f)[1].lower() in exts)
    if not found:
      raise FileNotFoundError(f"--region_mask: no mask for {stem!r} in "
                              f"{mask_dir} (expected {stem}.png or another "
                              "image extension)")
    if len(found) > 1:
      raise ValueError(f"--region_mask: several masks for {stem!r} in "
                       f"{folder}: {', '.join(found)}")
    masks.append(os.path.join(folder, found[0]))
  return masks


def region_specs(fv: flags.FlagValues, inputs: Sequence[tuple[str, str]]
                 ) -> tuple[str | None, list]:
  """(flag name, region per input) from --boxes / --region_mask.

  Everything that does not need the images is checked here, before the model
  is loaded: the flags' combination, the boxes' syntax, the masks' presence.
  """
  if fv.feather < 0:
    raise cli_flags.UsageError(f"--feather must be >= 0, got {fv.feather}")
  if fv.boxes is not None and fv.region_mask is not None:
    raise cli_flags.UsageError("give --boxes or --region_mask, not both")
  if fv.boxes is not None:
    boxes = regions.parse_boxes(fv.boxes, "--boxes")
    return "--boxes", [boxes] * len(inputs)
  if fv.region_mask is None:
    return None, [None] * len(inputs)
  if os.path.isdir(fv.region_mask):
    return "--region_mask", find_region_masks(fv.region_mask,
                                              [s for _, s in inputs])
  if not os.path.isfile(fv.region_mask):
    raise FileNotFoundError(f"--region_mask: {fv.region_mask}: no such file "
                            "or folder")
  return "--region_mask", [regions.load_mask(fv.region_mask,
                                             "--region_mask")] * len(inputs)


def _save_png(path: str, image: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  Image.fromarray(image).save(path)


def write_outputs(out_dir: str, stem: str, image: np.ndarray,
                  output_map: np.ndarray, task: str,
                  predictor: Predictor,
                  weights: np.ndarray | None = None) -> list[str]:
  """Writes the files of one input (see the module docstring); their paths.

  ``weights``: the region's weight map (regions.region_weights) or None.
  """
  base = os.path.join(out_dir, stem)
  # Restricted once here, so the overlays and masks below see it too.
  output_map = regions.restrict_map(output_map, weights, task)
  result = predictor.finish(output_map, task, image, weights)
  if task == tasks.TASKS[tasks.TAMPERED]:
    tamper_map, found = result
    classes = postprocess.tamper_classes(output_map)
    images = [tamper_map, postprocess.tamper_overlay(image, classes, found)]
  elif task == tasks.TASKS[tasks.SEGMENTATION]:
    mask = postprocess.text_mask(output_map, predictor.seg_threshold)
    images = [(mask * np.uint8(255)).astype(np.uint8),
              postprocess.segmentation_overlay(image, mask)]
  else:
    images = [result]
  # The same names check_no_overwrite looked at.
  files = [base + s for s in output_suffixes(task)]
  for p, im in zip(files, images):
    _save_png(p, im)
  if task == tasks.TASKS[tasks.TAMPERED]:
    with open(files[2], "w") as f:
      json.dump({"image_size": [image.shape[1], image.shape[0]],
                 "box_format": "x_min, y_min, x_max, y_max (inclusive)",
                 "regions": found}, f, indent=1)
  return files


def compile_only(fv: flags.FlagValues, topology: str,
                 inputs: Sequence[str]) -> dict:
  """``--compile_only``: the fit report of the model call (see
  ``upocr_jax.fit.infer_report``) for the model of ``--config`` or, without
  one, of the checkpoint's saved config; nothing else is read."""
  if fv.config is None and not fv.checkpoint:
    raise cli_flags.UsageError("--compile_only needs the model: --config or "
                               "--checkpoint")
  ignored = [f"--{n}" for n in ("task", "output_dir") if fv[n].value]
  ignored += ["the INPUT paths"] if inputs else []
  if ignored:
    logging.warning("--compile_only reads no weights or images: %s not used",
                    ", ".join(ignored))
  if fv.config is not None:
    model_config = fv.config.model
  else:
    model_config = weight_dir.read_model_config(
        runner.resolve_weights_dir(fv.checkpoint))
  image_size = fv.image_size
  if image_size is None:
    image_size, origin = default_image_size(fv.checkpoint, fv.config)
    logging.info("image size %d (%s; --image_size sets another)",
                 image_size, origin)
  return infer_report.run(model_config, infer_report.one_chip_parallel(
      fv.config), fv.batch_size, image_size, topology, fv.suggest,
                          batch_flag="--batch_size")


def main(argv: Sequence[str], fv: flags.FlagValues | None = None) -> list[str]:
  """Runs ``upocr-predict`` with ``argv`` (program name first); written files.

  Flags are parsed into a fresh FlagValues unless ``fv`` (already parsed) is
  given, so tests and notebooks can call this repeatedly.
  """
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  topology = cli_flags.compile_only_topology(fv)
  if topology is not None:
    compile_only(fv, topology, list(argv[1:]))
    return []
  cli_flags.require(fv, "checkpoint", "task", "output_dir")
  # Cheap checks first: the task against the checkpoint's config, the inputs.
  saved = weight_dir.read_model_config(
      runner.resolve_weights_dir(fv.checkpoint))
  task = tasks.canonical_task(fv.task, list(saved.tasks))
  inputs = collect_inputs(list(argv[1:]))
  check_no_overwrite(inputs, fv.output_dir, task)
  cli_flags.check_writable_dir(fv.output_dir,
                                   "choose another --output_dir")
  if not fv.skip_bad_images:
    check_images(inputs)
  region_flag, region_list = region_specs(fv, inputs)
  predictor = Predictor.from_checkpoint(
      fv.checkpoint, mode=fv.mode, image_size=fv.image_size, config=fv.config,
      batch_size=fv.batch_size, overlap=fv.overlap,
      seg_threshold=fv.seg_threshold, min_region_area=fv.min_region_area)
  written, skipped = [], []
  # A chunk of batch_size images per step: full model batches in resize mode,
  # bounded host memory in tiled mode.
  step = predictor.batch_size
  with tqdm(total=len(inputs), desc=f"upocr-predict {task}", unit="img") as bar:
    for i in range(0, len(inputs), step):
      chunk, images, region_chunk = [], [], []
      for (path, stem), region in zip(inputs[i:i + step],
                                      region_list[i:i + step]):
        try:
          images.append(load_image(path))
          chunk.append((path, stem))
          region_chunk.append(region)
        except (ValueError, FileNotFoundError) as e:
          if not fv.skip_bad_images:
            raise  # changed since check_images read it
          logging.warning("skipping %s", e)
          skipped.append(str(e))
      # Checked against the images' sizes before the model runs on them.
      weights = [regions.region_weights(r, *im.shape[:2], feather=fv.feather,
                                        name=f"{region_flag} on {p}")
                 for (p, _), im, r in zip(chunk, images, region_chunk)]
      maps = predictor.predict_maps(images, task)
      for (_, stem), image, m, w in zip(chunk, images, maps, weights):
        written += write_outputs(fv.output_dir, stem, image, m, task, predictor,
                                 w)
      bar.update(len(inputs[i:i + step]))
  print(f"wrote {len(written)} files for {len(inputs) - len(skipped)} images "
        f"to {fv.output_dir}")
  if skipped:
    print(f"skipped {len(skipped)} unreadable images:\n  "
          + "\n  ".join(skipped))
  return written


def run_main() -> None:
  """Console entry point (``upocr-predict``)."""
  cli_flags.run("upocr-predict", __doc__, define_flags, main,
                user_errors=(ValueError, FileNotFoundError, ImportError))


if __name__ == "__main__":
  run_main()
