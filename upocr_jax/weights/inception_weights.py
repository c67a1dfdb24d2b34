"""pytorch-fid's FID Inception weights: loading, checking, writing as .npz.

Python::

  inception = inception_weights.load_inception(
      "pt_inception-2015-12-05-6726825d.pth")

``convert_inception`` writes the feature network's weights as .npz or
.safetensors, for machines without torch (``upocr-convert --inception``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from flax import nnx
from safetensors.numpy import save_file as save_safetensors

from upocr_jax.models import FIDInceptionV3
from upocr_jax.models.layers import FrozenParam
from upocr_jax.weights import state_dict

# The classifier (1008 classes in the FID weights) is not part of the feature
# network; BatchNorm counters and torchvision's auxiliary head are never used.
_INCEPTION_UNUSED_PREFIXES = ("fc.", "AuxLogits.")
_INCEPTION_UNUSED_SUFFIXES = ("num_batches_tracked",)
_FID_NUM_CLASSES = 1008


def inception_key(path: tuple[Any, ...]) -> str:
  """The pytorch-fid state-dict key of an ``FIDInceptionV3`` parameter path."""
  parts = [str(p) for p in path]
  if parts[-1] == "kernel":
    parts[-1] = "weight"
  return ".".join(parts)


def load_inception(source: str | os.PathLike | Mapping[str, Any], *,
                   strict: bool = True) -> FIDInceptionV3:
  """The FID Inception network holding pytorch-fid's weights.

  Args:
    source: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (needs
      torch), or an .npz / .safetensors with the same keys (as
      ``convert_inception`` writes), or a mapping key -> array.
    strict: raise on any missing, unexpected or mis-shaped key (naming each).

  Returns:
    An ``FIDInceptionV3`` (see ``upocr_jax.evaluation.fid`` for the matching input
    pipeline).
  """
  name = state_dict.source_name(source)
  try:
    sd = state_dict.read_state_dict(source)
  except ImportError as e:
    raise ImportError(
        f"reading {name} needs torch, which is not installed. Convert it once "
        "on a machine with torch: python -m upocr_jax.weights.convert "
        "--inception "
        f"{name} --out inception_fid.npz, and pass the .npz instead") from e
  fc = sd.get("fc.weight")
  if fc is not None and fc.shape[0] != _FID_NUM_CLASSES:
    # Torchvision's ImageNet Inception has the same layer shapes but other
    # weights; FIDs from it are not comparable with pytorch-fid's.
    raise ValueError(f"{name}: fc.weight has {fc.shape[0]} classes, the FID "
                     f"Inception has {_FID_NUM_CLASSES}; these are not "
                     "pytorch-fid's pt_inception-2015-12-05 weights")
  report = state_dict.LoadReport()
  consumed: set[str] = set()
  model = state_dict.fill(
      state_dict.build(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)), strict),
      FrozenParam, sd, inception_key, report, consumed)
  for k in sd:
    if k in consumed:
      continue
    unused = (k.startswith(_INCEPTION_UNUSED_PREFIXES)
              or k.endswith(_INCEPTION_UNUSED_SUFFIXES))
    (report.ignored if unused else report.unexpected).append(k)
  state_dict.finish(report, strict, name)
  return model


def inception_state_dict(model: FIDInceptionV3) -> dict[str, np.ndarray]:
  """The feature network's weights as pytorch-fid keys and layouts (float32)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, FrozenParam)):
    key = inception_key(path)
    out[key] = state_dict.to_torch_layout(key, np.asarray(var[...], np.float32))
  return out


def convert_inception(source: str | os.PathLike, out: str | os.PathLike) -> int:
  """Checks pytorch-fid Inception weights and writes them as .npz/.safetensors.

  Only the feature network is written (no classifier). Returns the number of
  tensors written.
  """
  out = os.fspath(out)
  ext = os.path.splitext(out)[1].lower()
  if ext not in (".npz", ".safetensors"):
    raise ValueError(f"--out {out}: expected a .npz or .safetensors file name")
  if os.path.exists(out):
    raise FileExistsError(f"{out} already exists")
  sd = inception_state_dict(load_inception(source))
  if ext == ".npz":
    np.savez(out, **sd)
  else:
    save_safetensors({k: np.ascontiguousarray(v) for k, v in sd.items()}, out)
  return len(sd)
