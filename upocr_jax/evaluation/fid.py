"""FID as the official UPOCR evaluation computes it (pytorch-fid 0.3.0).

The official text-removal evaluation saves predictions and ground truths as PNG
and runs ``python -m pytorch_fid pred_dir gt_dir``. pytorch-fid reads each file
with PIL (``convert('RGB')``), applies ``ToTensor`` (x / 255 in float32), resizes
to 299x299 with ``F.interpolate(mode='bilinear', align_corners=False)`` (no
antialiasing), scales to [-1, 1] with ``2 * x - 1`` and takes the 2048-d pool3
features of its FID Inception network; FID is the Fréchet distance of the two
feature sets. :class:`InceptionFeatureExtractor` reproduces that pipeline in JAX
from uint8 images (what the PNGs hold), jitted and batched.

The network weights are never downloaded: the user passes pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth`` (needs torch to read) or the .npz that
``upocr-convert --inception=X.pth --out=X.npz`` writes from it.

Python::

  extractor = fid.InceptionFeatureExtractor("inception_fid.npz")
  acc = metrics.TextRemovalMetrics(feature_extractor=extractor)

Command line, like ``python -m pytorch_fid dir1 dir2``::

  python -m upocr_jax.evaluation.fid --inception_weights=inception_fid.npz \\
      dir1 dir2
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from numpy.typing import ArrayLike
from PIL import Image

from upocr_jax import cli_flags
from upocr_jax.evaluation import metrics
from upocr_jax.inference import image_ops
from upocr_jax.models.inception import FEATURE_DIM, FIDInceptionV3
from upocr_jax.weights import inception_weights

INCEPTION_SIZE = 299
# The file types pytorch-fid 0.3.0 globs for (lower case only, as it does).
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff",
                    "webp")


_TO_TENSOR = np.arange(256, dtype=np.float32) / np.float32(255)


@jax.jit
def preprocess(images: jax.Array) -> jax.Array:
  """pytorch-fid's input transform of a batch of same-sized images.

  Args:
    images: (N, H, W, 3) uint8 in [0, 255], or float in [0, 1] (taken as the
      output of ``ToTensor``).
  Returns:
    (N, 299, 299, 3) float32 in [-1, 1]: bilinearly resized as torch's
    ``F.interpolate(size=(299, 299), mode='bilinear', align_corners=False)``,
    then ``2 * x - 1``.
  """
  x = images
  if x.dtype == jnp.uint8:
    # ToTensor's x / 255, exactly: XLA would turn a division by a constant
    # into a multiplication by its (rounded) reciprocal.
    x = jnp.asarray(_TO_TENSOR)[x]
  x = x.astype(jnp.float32)
  h, w = x.shape[1:3]
  if (h, w) != (INCEPTION_SIZE, INCEPTION_SIZE):
    # Static gathers with torch's taps; width first, as torch's kernel nests it.
    h0, h1, hl0, hl1 = image_ops.bilinear_taps(h, INCEPTION_SIZE)
    w0, w1, wl0, wl1 = image_ops.bilinear_taps(w, INCEPTION_SIZE)
    cols = wl0[:, None] * x[:, :, w0] + wl1[:, None] * x[:, :, w1]
    x = (hl0[:, None, None] * cols[:, h0] + hl1[:, None, None] * cols[:, h1])
  return 2 * x - 1


@functools.partial(jax.jit, static_argnums=0)
def _pool3(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, state)(x)


def _as_image(image: ArrayLike, index: int) -> np.ndarray:
  x = np.asarray(image)
  if x.ndim != 3 or x.shape[-1] != 3 or min(x.shape[:2]) == 0:
    raise ValueError(f"image {index}: expected an HxWx3 RGB image, got shape "
                     f"{x.shape}")
  if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
    raise ValueError(f"image {index}: expected uint8 or float in [0, 1], got "
                     f"dtype {x.dtype}")
  return x


class InceptionFeatureExtractor:
  """pytorch-fid's pool3 features of images, jitted and batched.

  A ``feature_extractor`` for ``metrics.TextRemovalMetrics``: callable on one
  HxWx3 image, and ``extract_batch`` on a list of them (any sizes). The network
  always runs on ``batch_size`` images at 299x299 (a short last batch is padded
  to the next power of two), so it compiles only a few times.
  """

  dim = FEATURE_DIM

  def __init__(self, weights: str | os.PathLike | Mapping[str, Any]
               | FIDInceptionV3, *, batch_size: int = 32):
    """Loads the network.

    Args:
      weights: pytorch-fid's .pth (needs torch), a converted .npz /
        .safetensors, a state dict, or a built ``FIDInceptionV3``.
      batch_size: images per network call.
    """
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(weights, FIDInceptionV3):
      weights = inception_weights.load_inception(weights)
    self.graphdef, self.state = nnx.split(weights)
    self.batch_size = batch_size

  def __call__(self, image: ArrayLike) -> np.ndarray:
    """The (2048,) features of one HxWx3 image (uint8, or float in [0, 1])."""
    return self.extract_batch([image])[0]

  def extract_batch(self, images: Sequence[ArrayLike]) -> np.ndarray:
    """(N, 2048) float32 features of N HxWx3 images, in order."""
    images = [_as_image(im, i) for i, im in enumerate(images)]
    out = []
    for start in range(0, len(images), self.batch_size):
      out.append(self._run(images[start:start + self.batch_size]))
    if not out:
      return np.zeros((0, self.dim), np.float32)
    return np.concatenate(out)

  def _run(self, images: list[np.ndarray]) -> np.ndarray:
    n = len(images)
    if all(im.shape == images[0].shape and im.dtype == images[0].dtype
           for im in images):
      x = preprocess(np.stack(images))
    else:  # mixed sizes: resize each, then batch at 299x299
      x = jnp.concatenate([preprocess(im[None]) for im in images])
    padded = min(self.batch_size, 1 << (n - 1).bit_length())
    if padded > n:
      x = jnp.pad(x, ((0, padded - n), (0, 0), (0, 0), (0, 0)))
    return np.asarray(_pool3(self.graphdef, self.state, x))[:n]


def list_images(folder: str) -> list[str]:
  """The image files of ``folder`` that pytorch-fid reads, in its order."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder} is not a directory")
  names = [n for n in os.listdir(folder)
           if os.path.splitext(n)[1][1:] in IMAGE_EXTENSIONS]
  return sorted(os.path.join(folder, n) for n in names)


def folder_features(folder: str,
                    extractor: InceptionFeatureExtractor) -> np.ndarray:
  """(N, 2048) features of a folder's images, read as pytorch-fid reads them."""
  files = list_images(folder)
  feats = []
  for start in range(0, len(files), extractor.batch_size):
    batch = []
    for path in files[start:start + extractor.batch_size]:
      with Image.open(path) as im:
        batch.append(np.asarray(im.convert("RGB")))
    feats.append(extractor.extract_batch(batch))
  return np.concatenate(feats) if feats else np.zeros((0, extractor.dim))


def fid_of_folders(folder1: str, folder2: str,
                   extractor: InceptionFeatureExtractor) -> float:
  """FID between two folders of images (``python -m pytorch_fid f1 f2``)."""
  return metrics.frechet_distance(folder_features(folder1, extractor),
                                  folder_features(folder2, extractor))


USAGE = """FID between two folders of images, as pytorch-fid computes it.

Usage: python -m upocr_jax.evaluation.fid --inception_weights=FILE DIR1 DIR2

Example:
  python -m upocr_jax.evaluation.fid --inception_weights=inception_fid.npz \\
      predictions/text_removal ground_truth/

Like ``python -m pytorch_fid DIR1 DIR2``; prints the FID.
"""


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the flags of the FID command on ``fv`` (``argv`` unused: no
  config)."""
  del argv
  flags.DEFINE_string("inception_weights", None, "pytorch-fid's FID Inception "
                      "weights (.pth, or the .npz of upocr-convert "
                      "--inception).", flag_values=fv)
  flags.DEFINE_integer("batch_size", 32, "Images per Inception call.",
                       flag_values=fv)


def main(argv: Sequence[str], fv: flags.FlagValues | None = None) -> float:
  """Prints and returns the FID of the two folders in ``argv`` (program name
  first); flags parsed into a fresh FlagValues unless ``fv`` is given."""
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  cli_flags.require(fv, "inception_weights")
  if len(argv) != 3:
    raise cli_flags.UsageError(
        f"expected two image folders, got {len(argv) - 1} arguments")
  extractor = InceptionFeatureExtractor(fv.inception_weights,
                                        batch_size=fv.batch_size)
  value = fid_of_folders(argv[1], argv[2], extractor)
  print(f"FID: {value}")
  return value


if __name__ == "__main__":
  cli_flags.run("upocr_jax.evaluation.fid", USAGE, define_flags, main)
