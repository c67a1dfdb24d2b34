"""Forensic traces of the synthetic tampering: what a forger's edit leaves behind.

A real photograph carries one processing history everywhere (sensor noise, the
camera's resampling and JPEG compression); an edited word was made elsewhere and
pasted in, so it carries another, and where a word was erased the inpainting
leaves a smooth patch without the photo's grain. Tampered-IC13 style detectors
learn from exactly these differences, not from the font: a re-rendered word in
another font looks like any other word.

`camera_history` gives the authentic image its history; `edited_history` gives a
pasted patch a different one; `inpaint_residue` is what erasing a word leaves.
All take an explicit `np.random.Generator`, so a scene stays a pure function of
its seed.
"""

import io

import numpy as np
from PIL import Image, ImageFilter

EDIT_KINDS = ("clean", "blur", "noise", "resample")


def _jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="JPEG", quality=quality)
  buf.seek(0)
  return np.array(Image.open(buf).convert("RGB"))


def _noise(rng: np.random.Generator, image: np.ndarray,
           sigma: float) -> np.ndarray:
  out = image.astype(np.float32) + rng.normal(0, sigma, size=image.shape)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def camera_history(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
  """The authentic image's history: sensor grain, then JPEG compression."""
  image = _noise(rng, image, rng.uniform(5.0, 10.0))
  return _jpeg(image, int(rng.integers(75, 96)))


def edited_history(rng: np.random.Generator, patch: np.ndarray,
                   kinds: tuple[str, ...] = EDIT_KINDS) -> np.ndarray:
  """A pasted patch's own history, different from `camera_history`'s.

  One of `kinds`: rendered clean (no grain), blurred, much grainier, or
  resampled (scaled down and back up, as when a word is copied at another size).
  """
  kind = kinds[int(rng.integers(len(kinds)))]
  h, w = patch.shape[:2]
  if kind == "clean" or min(h, w) < 2:
    return patch
  if kind == "blur":
    return np.asarray(Image.fromarray(patch).filter(
        ImageFilter.GaussianBlur(rng.uniform(1.0, 1.6))))
  if kind == "noise":
    return _noise(rng, patch, rng.uniform(16.0, 28.0))
  scale = rng.uniform(0.4, 0.65)
  small = Image.fromarray(patch).resize(
      (max(1, round(w * scale)), max(1, round(h * scale))),
      Image.Resampling.BILINEAR)
  return np.asarray(small.resize((w, h), Image.Resampling.BILINEAR))


def inpaint_residue(rng: np.random.Generator, patch: np.ndarray) -> np.ndarray:
  """What erasing a word leaves: the background smoothed, its grain gone."""
  radius = rng.uniform(1.5, 3.0)
  return np.asarray(Image.fromarray(patch).filter(
      ImageFilter.GaussianBlur(radius)))
