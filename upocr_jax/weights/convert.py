"""``upocr-convert``: official PyTorch weights -> a weight directory or .npz.

Command line (writes a weight directory, see ``upocr_jax.weights.weight_dir``)::

  python -m upocr_jax.weights.convert --checkpoint upocr.pth \\
      --config configs/upocr.py:paper --out weights/upocr_paper

pytorch-fid's FID Inception weights, to .npz for machines without torch::

  python -m upocr_jax.weights.convert \\
      --inception pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

The converters themselves: ``official.py`` (UPOCR), ``vgg_weights.py`` (the
loss's VGG16), ``inception_weights.py`` (FID Inception).
"""

from __future__ import annotations

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from upocr_jax.weights import weight_dir
from upocr_jax.weights.inception_weights import convert_inception
from upocr_jax.weights.official import load_official
from upocr_jax.weights.vgg_weights import load_vgg


def _define_flags():
  config_flags.DEFINE_config_file(
      "config", None, "Config file whose config.model matches the checkpoint, "
      "e.g. configs/upocr.py:paper.", lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Official .pth/.npz/.safetensors.")
  flags.DEFINE_string("out", None, "Output weight directory (must not exist); "
                      "with --inception, the .npz/.safetensors file to write.")
  flags.DEFINE_string("vgg", None, "Optional torchvision VGG16 state dict, for "
                      "checkpoints without vgg16.* keys.")
  flags.DEFINE_bool("strict", True, "Fail on missing/unexpected/mis-shaped "
                    "keys (--nostrict: report them and keep initial values).")
  flags.DEFINE_string("inception", None, "Instead of a UPOCR checkpoint, "
                      "convert pytorch-fid's FID Inception weights "
                      "(pt_inception-2015-12-05-6726825d.pth) to --out, for "
                      "upocr-eval --inception-weights without torch.")
  flags.mark_flag_as_required("out")
  flags.register_multi_flags_validator(
      ["config", "checkpoint", "inception"],
      lambda v: v["inception"] is not None or (v["config"] is not None
                                               and v["checkpoint"] is not None),
      message="--config and --checkpoint are required (unless --inception)")


def _main(argv) -> None:
  if len(argv) > 1:
    raise SystemExit(f"upocr-convert: unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if f.inception:
    n = convert_inception(f.inception, f.out)
    print(f"Wrote {f.out}: FID Inception feature network, {n} tensors.")
    return
  logging.info("Reading %s", f.checkpoint)
  model, vgg = load_official(f.checkpoint, f.config.model, strict=f.strict,
                             return_vgg=True)
  if f.vgg:
    vgg = load_vgg(f.vgg, strict=f.strict)
  n = sum(int(np.prod(v.shape)) for v in
          jax.tree.leaves(nnx.state(model, nnx.Param)))
  weight_dir.save_weights(f.out, model, vgg)
  print(f"Wrote {f.out}: UPOCR with {n:,} parameters"
        + ("" if vgg is None else " + VGG16 loss features")
        + f" ({f.config.variant if 'variant' in f.config else 'config'}).")


def run_main() -> None:
  """Console-script entry point ``upocr-convert`` / ``python -m``."""
  _define_flags()
  app.run(_main)


if __name__ == "__main__":
  run_main()
