"""Import of official PyTorch UPOCR checkpoints (and export back to them).

Python::

  model = official.load_official("upocr.pth", config.model)
  model, vgg = official.load_official("upocr.pth", config.model,
                                      return_vgg=True)

Sources: see ``state_dict.read_state_dict``. The ``relative_coords_table`` /
``relative_position_index`` buffers are ignored (they are recomputed from the
window sizes). The command line is ``upocr-convert`` (``convert.py``).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
import numpy as np
from flax import nnx

from upocr_jax.models import UPOCR, VGG16Features
from upocr_jax.models.layers import FrozenParam
from upocr_jax.weights import state_dict
from upocr_jax.weights.vgg_weights import vgg_key

_BUFFERS = ("relative_coords_table", "relative_position_index")


def official_key(path: tuple[Any, ...], num_dec_stages: int = 5) -> str:
  """The official state-dict key of a UPOCR parameter path."""
  parts = [str(p) for p in path]
  leaf = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
  if parts == ["task_embedding"]:
    return "task_prompt.task_embedding.weight"
  if parts[0] == "encoder":
    parts[0] = "encoder.backbone"
    if parts[1] == "norms":  # per-stage output norms are norm0..norm3
      parts[1:3] = [f"norm{parts[2]}"]
  if parts[0] == "decoder" and parts[1] == "out_norms":
    parts[1:3] = [f"norm{int(parts[2]) + num_dec_stages - 3}"]
  name = ".".join(parts[:-1] + [leaf])
  return name.replace(".cpb_fc1.", ".cpb_mlp.0.").replace(".cpb_fc2.",
                                                           ".cpb_mlp.2.")


def load_official(source: str | os.PathLike | Mapping[str, Any],
                  model_config: ml_collections.ConfigDict, *,
                  strict: bool = True, return_vgg: bool = False):
  """Builds a ``UPOCR`` holding the weights of an official state dict.

  Args:
    source: path (.pth/.pt/.npz/.safetensors) or mapping key -> array.
    model_config: ``config.model`` describing the checkpoint's architecture.
    strict: raise on any missing, unexpected or mis-shaped key (naming each);
      with False, log them and keep the initial values of missing parameters.
    return_vgg: also return the loss's VGG16 built from the ``vgg16.*`` keys.

  Returns:
    The model, or (model, vgg) with ``return_vgg`` (vgg None if the checkpoint
    has no ``vgg16.*`` keys and ``strict`` is False).
  """
  sd = state_dict.read_state_dict(source)
  name = state_dict.source_name(source)
  report = state_dict.LoadReport()
  consumed: set[str] = set()
  n_dec = len(model_config.decoder.depths)
  model = state_dict.fill(
      state_dict.build(lambda: UPOCR(model_config, rngs=nnx.Rngs(0)), strict),
      nnx.Param, sd, lambda p: official_key(p, n_dec), report, consumed)
  vgg = None
  has_vgg = any(k.startswith("vgg16.") for k in sd)
  if return_vgg or has_vgg:
    # The VGG keys are checked even when not returned, so a damaged checkpoint
    # never passes silently.
    vgg = state_dict.fill(
        state_dict.build(lambda: VGG16Features(rngs=nnx.Rngs(0)), strict),
        FrozenParam, sd, vgg_key, report, consumed)
    if not has_vgg:
      vgg = None
  for k in sd:
    if k in consumed:
      continue
    (report.ignored if k.endswith(_BUFFERS) else report.unexpected).append(k)
  state_dict.finish(report, strict, name)
  return (model, vgg) if return_vgg else model


def to_official_state_dict(model: UPOCR, vgg: VGG16Features | None = None
                           ) -> dict[str, np.ndarray]:
  """The inverse of ``load_official``: numpy arrays in PyTorch layout and names
  (without the position buffers, which PyTorch recomputes too)."""
  n_dec = len(model.config.decoder.depths)
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = official_key(path, n_dec)
    out[key] = state_dict.to_torch_layout(key, np.asarray(var[...]))
  if vgg is not None:
    for path, var in nnx.to_flat_state(nnx.state(vgg, FrozenParam)):
      key = vgg_key(path)
      out[key] = state_dict.to_torch_layout(key, np.asarray(var[...]))
  return out
