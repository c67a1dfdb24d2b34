"""Run a trained UPOCR model on your own images: the Python API (``Predictor``).

Python::

  from upocr_jax.inference.predictor import Predictor
  predictor = Predictor.from_checkpoint("workdir/weights", mode="tiled")
  clean = predictor(image, "text removal")           # uint8 HxWx3, input size
  seg = predictor(image, "text segmentation")        # uint8 HxWx3 text map
  tmap, regions = predictor(image, "tampered text detection")
  logo_gone = predictor(image, "text removal", region=[[10, 10, 200, 80]])

Command line::

  upocr-predict --checkpoint=DIR --task="text removal" photo.jpg scans/ \
      --output_dir=out [--mode=resize|tiled] [--batch_size=8]
      [--boxes="x1,y1,x2,y2;..." | --region_mask=MASK] [--feather=3]

(``python -m upocr_jax.inference.cli``; ``upocr-predict --help`` lists the flags.)

Two modes: ``resize`` (the paper's way) resizes every image to the model size
(``image_size``, bicubic) and the output back to the input size (bilinear);
``tiled`` runs at native resolution on overlapping ``image_size`` tiles blended
with smooth weights (see tiling.py): better for documents and large photos, whose
text the resize blurs away. Outputs are quantised as the official evaluation
saved them (``(x * 255).astype(uint8)`` after clamping).

A ``region`` (boxes or a mask, see regions.py) restricts a task to part of the
image: text outside it is kept pixel-identical, segmentation and tampered
detection report nothing outside it.
"""

from __future__ import annotations

import os
import sys
from typing import Sequence, Union

import jax
import ml_collections
import numpy as np
from absl import logging
from PIL import Image, ImageOps

from upocr_jax import tasks
from upocr_jax.inference import regions
from upocr_jax.inference import runner
from upocr_jax.inference import tiling
from upocr_jax.inference.image_ops import resize_bilinear, to_uint8_like_official
from upocr_jax.inference.postprocess import tamper_regions
from upocr_jax.models import UPOCR
from upocr_jax.weights import weight_dir

MODES = ("resize", "tiled")
DEFAULT_IMAGE_SIZE = 512  # The paper's model size.
ImageLike = Union[np.ndarray, Image.Image, str, os.PathLike]


# Pillow modes of more than 8 bits per sample, and their full-scale value.
# "I" (32-bit int) holds 16-bit PNG/TIFF data in practice; "F" is taken as [0, 1].
_WIDE_MODES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535,
               "I;16N": 65535, "I": 65535, "F": 1}


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """uint8 RGB over a white page (transparent pixels are white, not black)."""
  a = alpha.astype(np.float32)[..., None] / 255.0
  out = rgb.astype(np.float32) * a + 255.0 * (1.0 - a)
  return np.round(out).astype(np.uint8)


def pil_to_rgb_uint8(img: Image.Image) -> np.ndarray:
  """uint8 HxWx3 RGB of a PIL image as a scan or photo is meant to look.

  EXIF rotation is applied; 16-bit (and 32-bit int) grey is scaled by its bit
  depth instead of clipped at 255 (which made 16-bit scans all white);
  transparency (RGBA, LA, palette with a transparent colour) is composited on
  white instead of dropped.
  """
  img = ImageOps.exif_transpose(img)
  if img.mode in _WIDE_MODES:
    x = np.asarray(img).astype(np.float64)
    full = _WIDE_MODES[img.mode]
    if img.mode == "I" and x.max(initial=0) > 65535:  # genuinely 32-bit
      full = 2 ** 32 - 1
    grey = np.round(np.clip(x / full, 0, 1) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
      img.mode == "P" and "transparency" in img.info):
    rgba = np.asarray(img.convert("RGBA"))
    return _composite_on_white(rgba[..., :3], rgba[..., 3])
  return np.asarray(img.convert("RGB"))


def load_image(path: str | os.PathLike) -> np.ndarray:
  """Reads any image PIL can open as uint8 HxWx3 RGB (see pil_to_rgb_uint8).

  Raises:
    FileNotFoundError / ValueError: naming the file and what is wrong.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file")
  try:
    with Image.open(path) as img:
      return pil_to_rgb_uint8(img)
  except (OSError, SyntaxError, ValueError) as e:  # PIL's decode errors.
    raise ValueError(f"{path}: cannot read image ({e})") from e


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
  """uint8 HxWx3 from a path, a PIL image (both as :func:`pil_to_rgb_uint8`)
  or an array (HxW grey, HxWx3 RGB, HxWx4 RGBA composited on white; uint8 or
  float in [0, 1])."""
  if isinstance(image, (str, os.PathLike)):
    return load_image(image)
  if isinstance(image, Image.Image):
    return pil_to_rgb_uint8(image)
  x = np.asarray(image)
  if x.ndim == 2:
    x = np.repeat(x[..., None], 3, axis=-1)
  if x.ndim != 3 or x.shape[-1] not in (3, 4) or 0 in x.shape[:2]:
    raise ValueError(f"image must be HxW, HxWx3 or HxWx4, got shape {x.shape}")
  if np.issubdtype(x.dtype, np.floating):
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
      raise ValueError("float images must be in [0, 1]")
    x = np.round(x * 255).astype(np.uint8)
  elif x.dtype != np.uint8:
    raise ValueError(f"image dtype must be uint8 or float, got {x.dtype}")
  if x.shape[-1] == 4:
    return _composite_on_white(x[..., :3], x[..., 3])
  return x


def default_image_size(checkpoint: str | None,
                       config: ml_collections.ConfigDict | None
                       ) -> tuple[int, str]:
  """(size, where it comes from) when no size is given: the size
  ``checkpoint`` was saved with, else the config's ``data.image_size``,
  else the paper's 512."""
  source = None
  if checkpoint:
    source = runner.resolve_weights_dir(checkpoint)
    saved = weight_dir.read_image_size(source)
    if saved is not None:
      return saved, f"the size {source} was saved with"
  if config is not None and "data" in config:
    return config.data.image_size, "the config's data.image_size"
  return DEFAULT_IMAGE_SIZE, ("the paper's" if source is None else
                              f"the paper's; {source} records no image size")


class Predictor:
  """Batched inference of one UPOCR model on images of any size.

  Args:
    model: the UPOCR model.
    image_size: the model size: input side in ``resize`` mode, tile side in
      ``tiled`` mode (a multiple of 32; the size the model was trained at).
    mode: 'resize' or 'tiled' (see the module docstring).
    batch_size: images (resize) or tiles (tiled) per model call.
    overlap: minimum tile overlap in pixels (default image_size // 4).
    seg_threshold: text where the segmentation map's channel mean > this.
    min_region_area: tampered/real components below this many pixels dropped.
    config: a config whose ``mesh`` and ``sharding`` sections place the model
      as training does (parameters sharded by the rules, each batch split over
      the batch axes; ``batch_size`` rounded up to a multiple of their size);
      None or a config without them: data parallel over all devices.
    devices: the mesh's devices (default: all).
  """

  def __init__(self, model: UPOCR, image_size: int = DEFAULT_IMAGE_SIZE,
               mode: str = "resize", batch_size: int = 8,
               overlap: int | None = None,
               seg_threshold: float = tasks.SEG_THRESHOLD,
               min_region_area: int = 16,
               config: ml_collections.ConfigDict | None = None,
               devices: Sequence[jax.Device] | None = None):
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if image_size <= 0 or image_size % 32:
      raise ValueError(f"image_size must be a positive multiple of 32, got "
                       f"{image_size}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    overlap = image_size // 4 if overlap is None else overlap
    if not 0 <= overlap < image_size:
      raise ValueError(f"overlap must be in [0, image_size={image_size}), got "
                       f"{overlap}")
    self.model = model
    self.tasks = list(model.config.tasks)
    self.image_size, self.mode, self.batch_size = image_size, mode, batch_size
    self.overlap = overlap
    self.seg_threshold, self.min_region_area = seg_threshold, min_region_area
    self.mesh, self.parallel = runner.place_on_mesh(model, config, devices)

  @classmethod
  def from_checkpoint(cls, checkpoint: str, mode: str = "resize",
                      image_size: int | None = None,
                      config: ml_collections.ConfigDict | None = None,
                      **kwargs) -> "Predictor":
    """A Predictor for a weight directory or training workdir.

    Args:
      checkpoint: weight directory, or training workdir (latest checkpoint).
      mode: 'resize' or 'tiled'.
      image_size: model size; default the size the checkpoint was saved with
        (a workdir's ``config.data.image_size``; a weight directory's, see
        ``weight_dir.read_image_size``), else ``config.data.image_size`` when
        a config is given, else 512 (the paper's). The size used is logged.
      config: optional full config; the checkpoint must match its
        ``config.model`` (a ValueError names the differing fields), and is
        loaded sharded on its mesh (see ``Predictor``'s ``config``).
      **kwargs: the other ``Predictor`` arguments.
    """
    # Restored straight into the mesh's shardings (never whole on a device);
    # __init__'s placement then finds every array in place.
    model, _, _ = runner.load_on_mesh(checkpoint, config,
                                      kwargs.get("devices"))
    if image_size is None:
      image_size, origin = default_image_size(checkpoint, config)
      # Said every time: resize mode's outputs depend on it.
      logging.info("image size %d (%s; --image_size sets another)",
                   image_size, origin)
    return cls(model, image_size=image_size, mode=mode, config=config,
               **kwargs)

  def task_id(self, task: str) -> int:
    """Index of ``task`` (name or key) in the model's tasks."""
    return self.tasks.index(tasks.canonical_task(task, self.tasks))

  def predict_maps(self, images: Sequence[ImageLike], task: str
                   ) -> list[np.ndarray]:
    """Raw output maps, float32 HxWx3 in [0, 1], each at its input's size."""
    task_id = self.task_id(task)
    arrays = [to_rgb_uint8(im) for im in images]
    if not arrays:
      return []
    s = self.image_size
    if self.mode == "resize":
      batch = np.stack([
          a if a.shape[:2] == (s, s) else
          np.asarray(Image.fromarray(a).resize((s, s), Image.Resampling.BICUBIC))
          for a in arrays])
      outs = self._run(batch, task_id)
      # Bilinear like the official evaluation's upsampling of label maps.
      return [resize_bilinear(o, *a.shape[:2]) for o, a in zip(outs, arrays)]
    grids = [tiling.make_grid(a.shape[0], a.shape[1], s, self.overlap)
             for a in arrays]
    tiles = np.concatenate([tiling.extract_tiles(a, g)
                            for a, g in zip(arrays, grids)])
    outs = self._run(tiles, task_id)
    maps, k = [], 0
    for g in grids:
      maps.append(tiling.blend_tiles(outs[k:k + g.num_tiles], g))
      k += g.num_tiles
    return maps

  def _run(self, images: np.ndarray, task_id: int) -> np.ndarray:
    return runner.predict_batches(self.model, images, task_id, self.batch_size,
                                  self.mesh, self.parallel)

  def finish(self, output_map: np.ndarray, task: str,
             image: np.ndarray | None = None,
             weights: np.ndarray | None = None):
    """uint8 output (plus regions for tampered text) from a float map.

    Args:
      output_map: float HxWx3 model output at the input's size.
      task: the task name.
      image: the uint8 HxWx3 input; needed for text removal with ``weights``.
      weights: a region's weight map (regions.region_weights), or None for the
        whole image.
    """
    task = tasks.canonical_task(task, self.tasks)
    output_map = regions.restrict_map(output_map, weights, task)
    out = to_uint8_like_official(output_map)
    if task == tasks.TASKS[tasks.TAMPERED]:
      return out, tamper_regions(output_map, self.min_region_area)
    if weights is not None and task == tasks.TASKS[tasks.TEXT_REMOVAL]:
      if image is None:
        raise ValueError("text removal in a region needs the input image")
      out = regions.blend_removal(out, image, weights)
    return out

  def predict_batch(self, images: Sequence[ImageLike], task: str,
                    region_list: Sequence[regions.Region] | None = None,
                    feather: int = regions.DEFAULT_FEATHER) -> list:
    """``__call__`` on several images at once (batched model calls).

    ``region_list``: None, or one region per image (each may be None).
    """
    arrays = [to_rgb_uint8(im) for im in images]
    if region_list is None:
      region_list = [None] * len(arrays)
    if len(region_list) != len(arrays):
      raise ValueError(f"region_list has {len(region_list)} entries for "
                       f"{len(arrays)} images")
    # Regions are checked before the model runs: a bad box fails fast.
    weights = [regions.region_weights(r, *a.shape[:2], feather=feather)
               for r, a in zip(region_list, arrays)]
    return [self.finish(m, task, a, w) for m, a, w in
            zip(self.predict_maps(arrays, task), arrays, weights)]

  def __call__(self, image: ImageLike, task: str,
               region: regions.Region = None,
               feather: int = regions.DEFAULT_FEATHER):
    """Runs ``task`` on one image, optionally only in a region of it.

    Args:
      image: a path, PIL image or array (see :func:`to_rgb_uint8`).
      task: 'text removal', 'text segmentation' or 'tampered text detection'
        (or with underscores).
      region: where the task applies (see regions.py): a list of boxes
        ``[x1, y1, x2, y2]`` (pixels, x2/y2 exclusive), a mask (HxW array, PIL
        image or image file; non-zero = region) or None (whole image). Outside
        it the removal output is the input, exactly; the segmentation map is
        zero; the tampered map is background and no region is reported.
      feather: text removal blends prediction and input over this many pixels
        just inside the region's border (0: hard edge).
    Returns:
      uint8 HxWx3 at the input's size: the text-free image, or the text map
      (white text), or for tampered text a tuple (map: R background, G real,
      B tampered; list of regions, see postprocess.tamper_regions).
    """
    return self.predict_batch([image], task, [region], feather)[0]


if __name__ == "__main__":
  # A library module: point at the command instead of exiting silently.
  sys.exit("upocr_jax.inference.predictor is the Python API; the command line "
           "is upocr-predict (python -m upocr_jax.inference.cli --help)")
