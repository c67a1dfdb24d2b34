"""The loss's frozen VGG16: official UPOCR or torchvision weights, and the
VGG that ``config.loss`` asks for.

Python::

  vgg = vgg_weights.load_vgg("vgg16-397923af.pth")   # torchvision state dict
  vgg = vgg_weights.load_loss_vgg(config.loss)       # None: perceptual and
                                                     # style are off
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
from flax import nnx

from upocr_jax import config_checks
from upocr_jax.models import ConfigError, VGG16Features
from upocr_jax.models.layers import FrozenParam
from upocr_jax.weights import state_dict
from upocr_jax.weights import weight_dir

# First index in torchvision's vgg16().features of each conv group.
_TORCHVISION_GROUP_START = (0, 5, 10)
# What to do when config.loss.vgg_weights has no VGG16. The official training
# builds its VGG16 without weights and fills it from the pre-training
# checkpoint (models/upocr.py load_pretrained_model); the released UPOCR
# weights were saved for evaluation, without it.
VGG_ADVICE = (
    "the official training takes its VGG16 from the pre-training checkpoint: "
    "convert it with `upocr-convert --official=pretraining_weights.pth "
    "--config=paper --out=weights/upocr_pretrain --nostrict` and use that "
    "directory for config.loss.vgg_weights (and config.init_from), or give a "
    "torchvision VGG16 state dict (vgg16-397923af.pth)")


def vgg_key(path: tuple[Any, ...], torchvision: bool = False) -> str:
  """Official (``vgg16.enc_G.I``) or torchvision (``features.N``) VGG key."""
  _, group, conv, leaf = path
  leaf = "weight" if leaf == "kernel" else leaf
  if torchvision:
    return f"features.{_TORCHVISION_GROUP_START[group] + 2 * conv}.{leaf}"
  return f"vgg16.enc_{group + 1}.{2 * conv}.{leaf}"


def load_vgg(source: str | os.PathLike | Mapping[str, Any], *,
             strict: bool = True, name: str | None = None) -> VGG16Features:
  """VGG16 features from an official UPOCR checkpoint or torchvision weights.

  A torchvision ``vgg16`` state dict (``features.N.weight``; its classifier
  is ignored) or any dict with the official ``vgg16.enc_G.I.*`` keys.
  ``name``: how errors name the source (default its path).
  """
  sd = state_dict.read_state_dict(source)
  torchvision = not any(k.startswith("vgg16.") for k in sd)
  report = state_dict.LoadReport()
  consumed: set[str] = set()
  vgg = state_dict.fill(
      state_dict.build(lambda: VGG16Features(rngs=nnx.Rngs(0)), strict),
      FrozenParam, sd, lambda p: vgg_key(p, torchvision), report, consumed)
  # Everything else in the file (the UPOCR model, the VGG classifier, deeper
  # VGG layers) is legitimately unused here.
  report.ignored = [k for k in sd if k not in consumed]
  state_dict.finish(report, strict, name or state_dict.source_name(source))
  return vgg


def load_loss_vgg(loss_config: ml_collections.ConfigDict
                  ) -> VGG16Features | None:
  """The VGG16 of ``config.loss.vgg_weights``; None when perceptual and style
  are both off.

  Args:
    loss_config: ``config.loss``. ``vgg_weights`` is a weight directory
      (upocr-convert output with a VGG), an official UPOCR checkpoint
      (``vgg16.*`` keys) or a torchvision VGG16 state dict (``features.N.*``),
      as .pth/.npz/.safetensors.
  """
  config_checks.check_loss(loss_config)
  if not (loss_config.perceptual or loss_config.style):
    return None
  path = os.fspath(loss_config.vgg_weights)
  if os.path.isdir(path):
    _, vgg = weight_dir.load_weights(path, with_vgg=True)
    if vgg is None:
      raise ConfigError(f"config.loss.vgg_weights: weight directory {path} "
                        f"holds no VGG16 weights (a converted UPOCR release "
                        f"has none); {VGG_ADVICE}")
    return vgg
  try:
    sd = state_dict.read_state_dict(path)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.loss.vgg_weights: {e}") from e
  except ValueError as e:  # unknown format, entries that are no arrays
    raise ConfigError(f"config.loss.vgg_weights: {e}") from e
  if not any(k.startswith(("vgg16.", "features.")) for k in sd):
    raise ConfigError(f"config.loss.vgg_weights: {path} holds no VGG16 "
                      f"weights (no vgg16.* or features.* keys); {VGG_ADVICE}")
  return load_vgg(sd, name=path)
