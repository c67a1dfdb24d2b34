"""``upocr-convert``: official PyTorch weights -> a weight directory or .npz.

Command line (writes a weight directory, see ``upocr_jax.weights.weight_dir``)::

  upocr-convert --official=upocr.pth --config=paper --out=weights/upocr_paper

pytorch-fid's FID Inception weights, to .npz for machines without torch::

  upocr-convert --inception=pt_inception-2015-12-05-6726825d.pth \\
      --out=inception_fid.npz

(``python -m upocr_jax.weights.convert`` is the same command.) The converters
themselves: ``official.py`` (UPOCR), ``vgg_weights.py`` (the loss's VGG16),
``inception_weights.py`` (FID Inception).
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from absl import flags, logging
from flax import nnx

from upocr_jax import cli_flags
from upocr_jax.weights import weight_dir
from upocr_jax.weights.inception_weights import convert_inception
from upocr_jax.weights.official import load_official
from upocr_jax.weights.state_dict import StrictLoadError
from upocr_jax.weights.vgg_weights import load_vgg


USAGE = """upocr-convert: official PyTorch weights to a weight directory.

Usage: upocr-convert --official=FILE --config=CONFIG --out=DIR [--vgg=FILE]
       upocr-convert --inception=FILE --out=FILE.npz

Examples:
  upocr-convert --official=upocr.pth --config=paper --out=weights/upocr_paper
  upocr-convert --official=upocr.pth --config=paper --vgg=vgg16-397923af.pth \\
      --out=weights/upocr_paper
  upocr-convert --inception=pt_inception-2015-12-05-6726825d.pth \\
      --out=inception_fid.npz

The weight directory is what --checkpoint of upocr-eval / upocr-predict reads.
"""


def define_flags(fv: flags.FlagValues,
                 argv: Sequence[str] | None = None) -> None:
  """Defines the flags of ``upocr-convert`` on ``fv`` (``--config.*``
  overrides looked up in ``argv``, default sys.argv)."""
  cli_flags.DEFINE_config(fv, argv, help_string="Config whose model matches "
                          "the official checkpoint")
  flags.DEFINE_string("official", None, "Official UPOCR checkpoint "
                      "(.pth/.pt/.npz/.safetensors) to convert.",
                      flag_values=fv)
  flags.DEFINE_string("out", None, "Output weight directory (must not exist); "
                      "with --inception, the .npz/.safetensors file.",
                      flag_values=fv)
  flags.DEFINE_string("vgg", None, "Torchvision VGG16 state dict for the "
                      "perceptual loss (replaces the checkpoint's vgg16.*).",
                      flag_values=fv)
  flags.DEFINE_bool("strict", True, "Fail on missing/unexpected/mis-shaped "
                    "keys; --nostrict reports them and keeps initial values.",
                    flag_values=fv)
  flags.DEFINE_string("inception", None, "Instead: pytorch-fid's FID "
                      "Inception .pth to --out (for upocr-eval "
                      "--inception_weights without torch).", flag_values=fv)


def _relaxed(e: StrictLoadError) -> ValueError:
  """The error with the command line's way to relax it."""
  relax = "pass --nostrict"
  if e.report.missing and all(k.startswith("vgg16.")
                              for k in e.report.missing):
    relax = ("the checkpoint has no vgg16.* keys: pass --vgg=FILE "
             "(torchvision VGG16), or --nostrict")
  return ValueError(e.message(relax))


def main(argv: Sequence[str], fv: flags.FlagValues | None = None) -> str:
  """Runs ``upocr-convert`` with ``argv`` (program name first); returns what
  it wrote. Flags are parsed into a fresh FlagValues unless ``fv`` (parsed)
  is given."""
  if fv is None:
    fv, argv = cli_flags.parse(define_flags, argv)
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments {argv[1:]}")
  cli_flags.require(fv, "out")
  if fv.inception:
    n = convert_inception(fv.inception, fv.out)
    print(f"Wrote {fv.out}: FID Inception feature network, {n} tensors.")
    return fv.out
  cli_flags.require(fv, "official", "config")
  logging.info("Reading %s", fv.official)
  try:
    if fv.vgg:
      # The loss VGG comes from --vgg: the checkpoint need not hold one.
      model = load_official(fv.official, fv.config.model, strict=fv.strict)
      vgg = load_vgg(fv.vgg, strict=fv.strict)
    else:
      model, vgg = load_official(fv.official, fv.config.model,
                                 strict=fv.strict, return_vgg=True)
  except StrictLoadError as e:
    raise _relaxed(e) from e
  n = sum(int(np.prod(v.shape)) for v in
          jax.tree.leaves(nnx.state(model, nnx.Param)))
  # The config's image size becomes the prediction default of the directory.
  weight_dir.save_weights(fv.out, model, vgg, image_size=(
      fv.config.data.image_size if "data" in fv.config else None))
  print(f"Wrote {fv.out}: UPOCR with {n:,} parameters"
        + ("" if vgg is None else " + VGG16 loss features")
        + f" ({fv.config.variant if 'variant' in fv.config else 'config'}).")
  return fv.out


def run_main() -> None:
  """Console-script entry point ``upocr-convert`` / ``python -m``."""
  cli_flags.run("upocr-convert", USAGE, define_flags, main,
                user_errors=(ValueError, FileNotFoundError, FileExistsError,
                             ImportError))


if __name__ == "__main__":
  run_main()
