"""Import of official PyTorch UPOCR checkpoints (and torchvision VGG16 weights).

Python::

  model = convert.load_official("upocr.pth", config.model)
  model, vgg = convert.load_official("upocr.pth", config.model, return_vgg=True)
  vgg = convert.load_vgg("vgg16-397923af.pth")     # torchvision state dict
  inception = convert.load_inception("pt_inception-2015-12-05-6726825d.pth")

Command line (writes a weight directory, see ``upocr_jax.weights.weight_dir``)::

  upocr-convert --official=upocr.pth --config=paper --out=weights/upocr_paper

pytorch-fid's FID Inception weights, to .npz for machines without torch::

  upocr-convert --inception=pt_inception-2015-12-05-6726825d.pth \\
      --out=inception_fid.npz

(``python -m upocr_jax.weights.convert`` is the same command.)

Sources: a ``.pth``/``.pt`` file (needs torch: ``pip install upocr_jax[torch]``),
``.npz``, ``.safetensors``, or a mapping key -> array. The official
``{'model': ...}`` wrapping and the DistributedDataParallel ``module.`` prefix are
accepted; the ``relative_coords_table`` / ``relative_position_index`` buffers are
ignored (they are recomputed from the window sizes).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from flax import nnx

from upocr_jax import cli_flags
from upocr_jax.weights import weight_dir
from upocr_jax.models import FIDInceptionV3, UPOCR, VGG16Features
from upocr_jax.models.vgg import FrozenParam

_BUFFERS = ("relative_coords_table", "relative_position_index")
# First index in torchvision's vgg16().features of each conv group.
_TORCHVISION_GROUP_START = (0, 5, 10)


# ----------------------------------------------------------------------------
# Reading state dicts
# ----------------------------------------------------------------------------
def _load_pth(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch: pip install "
                      "'upocr_jax[torch]' (or convert it to .npz/.safetensors "
                      "elsewhere)") from e
  import argparse  # pylint: disable=g-import-not-at-top
  # Official checkpoints also pickle their argparse.Namespace; allow just that.
  with torch.serialization.safe_globals([argparse.Namespace]):
    sd = torch.load(path, map_location="cpu", weights_only=True)
  return sd


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]
                    ) -> dict[str, np.ndarray]:
  """Reads a state dict as {key: float32/int numpy array}, unwrapped."""
  name = "the given mapping"
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    name = path
    if not os.path.isfile(path):
      raise FileNotFoundError(f"checkpoint {path} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".pth", ".pt", ".bin"):
      sd = _load_pth(path)
    elif ext == ".npz":
      with np.load(path, allow_pickle=False) as z:
        sd = {k: z[k] for k in z.files}
    elif ext == ".safetensors":
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
      sd = load_file(path)
    else:
      raise ValueError(f"checkpoint {path}: unknown format {ext!r}; expected "
                       ".pth, .pt, .npz or .safetensors")
  else:
    sd = source
  if "model" in sd and isinstance(sd["model"], Mapping):
    sd = sd["model"]
  out = {}
  for k, v in sd.items():
    if not hasattr(v, "shape"):
      raise ValueError(f"{name}: entry {k!r} is not an array "
                       f"({type(v).__name__})")
    k = k[len("module."):] if k.startswith("module.") else k
    if hasattr(v, "detach"):  # torch tensor
      v = v.detach().cpu().numpy()
    out[k] = np.asarray(v)
  return out


# ----------------------------------------------------------------------------
# Name and layout mapping
# ----------------------------------------------------------------------------
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


def vgg_key(path: tuple[Any, ...], torchvision: bool = False) -> str:
  """Official (``vgg16.enc_G.I``) or torchvision (``features.N``) VGG key."""
  _, group, conv, leaf = path
  leaf = "weight" if leaf == "kernel" else leaf
  if torchvision:
    return f"features.{_TORCHVISION_GROUP_START[group] + 2 * conv}.{leaf}"
  return f"vgg16.enc_{group + 1}.{2 * conv}.{leaf}"


def to_jax_layout(key: str, value: np.ndarray) -> np.ndarray:
  """PyTorch layout -> ours: Linear (out,in)->(in,out), Conv OIHW->HWIO."""
  if key.endswith("logit_scale"):
    return value.reshape(-1)
  if value.ndim == 2 and key.endswith("weight") and "task_embedding" not in key:
    return value.T
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


@dataclasses.dataclass
class LoadReport:
  """What matching a state dict against a module found."""
  loaded: list[str] = dataclasses.field(default_factory=list)
  missing: list[str] = dataclasses.field(default_factory=list)
  unexpected: list[str] = dataclasses.field(default_factory=list)
  mis_shaped: list[str] = dataclasses.field(default_factory=list)
  ignored: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mis_shaped)

  def describe(self, source: str) -> str:
    lines = [f"{source}: {len(self.loaded)} tensors loaded"]
    for what in ("missing", "unexpected", "mis_shaped"):
      keys = getattr(self, what)
      if keys:
        lines.append(f"  {what.replace('_', '-')} ({len(keys)}): "
                     + ", ".join(keys[:20]) + (" ..." if len(keys) > 20 else ""))
    return "\n".join(lines)


def _fill(module: nnx.Module, var_type, sd: dict[str, np.ndarray], key_fn,
          report: LoadReport, consumed: set[str]) -> nnx.Module:
  graphdef, state = nnx.split(module)
  flat = nnx.to_flat_state(state)
  new = []
  for path, var in flat:
    if not isinstance(var, var_type):
      new.append((path, var))
      continue
    key = key_fn(path)
    if key not in sd:
      report.missing.append(key)
      new.append((path, var))
      continue
    consumed.add(key)
    value = to_jax_layout(key, sd[key])
    if tuple(value.shape) != tuple(var.shape):
      report.mis_shaped.append(f"{key} (checkpoint {tuple(sd[key].shape)}, "
                               f"model expects {_torch_shape(key, var.shape)})")
      new.append((path, var))
      continue
    report.loaded.append(key)
    new.append((path, var.replace(jnp.asarray(value, jnp.float32))))
  return nnx.merge(graphdef, nnx.from_flat_state(new))


def _torch_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  return _to_torch_layout(key, np.empty(shape, np.float32)).shape


def _build(factory, strict: bool):
  # Strict loads overwrite every parameter, so skip the random init.
  return nnx.eval_shape(factory) if strict else factory()


class StrictLoadError(ValueError):
  """A strict load found missing, unexpected or mis-shaped keys (``report``)."""

  def __init__(self, report: LoadReport, source: str,
               relax: str = "pass strict=False"):
    self.report, self.source = report, source
    super().__init__(self.message(relax))

  def message(self, relax: str) -> str:
    """The report, ending with how to relax the check (``relax``, e.g. the
    keyword argument or the command-line flag that does it)."""
    return (self.report.describe(self.source) + f"\n({relax} to load what "
            "matches and keep the initial values of the rest)")


def _finish(report: LoadReport, strict: bool, source_name: str):
  if report.ok:
    return
  if strict:
    raise StrictLoadError(report, source_name)
  logging.warning("%s", report.describe(source_name))


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
  sd = read_state_dict(source)
  name = source if isinstance(source, (str, os.PathLike)) else "state dict"
  report = LoadReport()
  consumed: set[str] = set()
  n_dec = len(model_config.decoder.depths)
  model = _fill(_build(lambda: UPOCR(model_config, rngs=nnx.Rngs(0)), strict),
                nnx.Param, sd, lambda p: official_key(p, n_dec), report,
                consumed)
  vgg = None
  has_vgg = any(k.startswith("vgg16.") for k in sd)
  if return_vgg or has_vgg:
    # The VGG keys are checked even when not returned, so a damaged checkpoint
    # never passes silently.
    vgg = _fill(_build(lambda: VGG16Features(rngs=nnx.Rngs(0)), strict),
                FrozenParam, sd, vgg_key, report, consumed)
    if not has_vgg:
      vgg = None
  for k in sd:
    if k in consumed:
      continue
    (report.ignored if k.endswith(_BUFFERS) else report.unexpected).append(k)
  _finish(report, strict, str(name))
  return (model, vgg) if return_vgg else model


def to_official_state_dict(model: UPOCR, vgg: VGG16Features | None = None
                           ) -> dict[str, np.ndarray]:
  """The inverse of ``load_official``: numpy arrays in PyTorch layout and names
  (without the position buffers, which PyTorch recomputes too)."""
  n_dec = len(model.config.decoder.depths)
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    key = official_key(path, n_dec)
    out[key] = _to_torch_layout(key, np.asarray(var[...]))
  if vgg is not None:
    for path, var in nnx.to_flat_state(nnx.state(vgg, FrozenParam)):
      key = vgg_key(path)
      out[key] = _to_torch_layout(key, np.asarray(var[...]))
  return out


def _to_torch_layout(key: str, value: np.ndarray) -> np.ndarray:
  if key.endswith("logit_scale"):
    return value.reshape(-1, 1, 1)
  if value.ndim == 2 and key.endswith("weight") and "task_embedding" not in key:
    return value.T
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  return value


def load_vgg(source: str | os.PathLike | Mapping[str, Any], *,
             strict: bool = True) -> VGG16Features:
  """VGG16 features from an official UPOCR checkpoint or torchvision weight_dir.

  A torchvision ``vgg16`` state dict (``features.N.weight``; its classifier
  is ignored) or any dict with the official ``vgg16.enc_G.I.*`` keys.
  """
  sd = read_state_dict(source)
  torchvision = not any(k.startswith("vgg16.") for k in sd)
  report = LoadReport()
  consumed: set[str] = set()
  vgg = _fill(_build(lambda: VGG16Features(rngs=nnx.Rngs(0)), strict),
              FrozenParam, sd, lambda p: vgg_key(p, torchvision), report,
              consumed)
  # Everything else in the file (the UPOCR model, the VGG classifier, deeper
  # VGG layers) is legitimately unused here.
  report.ignored = [k for k in sd if k not in consumed]
  name = source if isinstance(source, (str, os.PathLike)) else "state dict"
  _finish(report, strict, str(name))
  return vgg


# ----------------------------------------------------------------------------
# FID Inception (pytorch-fid weights)
# ----------------------------------------------------------------------------
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
  """The FID Inception network holding pytorch-fid's weight_dir.

  Args:
    source: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (needs
      torch), or an .npz / .safetensors with the same keys (as
      ``convert_inception`` writes), or a mapping key -> array.
    strict: raise on any missing, unexpected or mis-shaped key (naming each).

  Returns:
    An ``FIDInceptionV3`` (see ``upocr_jax.evaluation.fid`` for the matching input
    pipeline).
  """
  name = str(source) if isinstance(source, (str, os.PathLike)) else "state dict"
  try:
    sd = read_state_dict(source)
  except ImportError as e:
    raise ImportError(
        f"reading {name} needs torch, which is not installed. Convert it once "
        "on a machine with torch: python -m upocr_jax.weights.convert --inception "
        f"{name} --out inception_fid.npz, and pass the .npz instead") from e
  fc = sd.get("fc.weight")
  if fc is not None and fc.shape[0] != _FID_NUM_CLASSES:
    # Torchvision's ImageNet Inception has the same layer shapes but other
    # weights; FIDs from it are not comparable with pytorch-fid's.
    raise ValueError(f"{name}: fc.weight has {fc.shape[0]} classes, the FID "
                     f"Inception has {_FID_NUM_CLASSES}; these are not "
                     "pytorch-fid's pt_inception-2015-12-05 weights")
  report = LoadReport()
  consumed: set[str] = set()
  model = _fill(_build(lambda: FIDInceptionV3(rngs=nnx.Rngs(0)), strict),
                FrozenParam, sd, inception_key, report, consumed)
  for k in sd:
    if k in consumed:
      continue
    unused = (k.startswith(_INCEPTION_UNUSED_PREFIXES)
              or k.endswith(_INCEPTION_UNUSED_SUFFIXES))
    (report.ignored if unused else report.unexpected).append(k)
  _finish(report, strict, name)
  return model


def inception_state_dict(model: FIDInceptionV3) -> dict[str, np.ndarray]:
  """The feature network's weights as pytorch-fid keys and layouts (float32)."""
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model, FrozenParam)):
    key = inception_key(path)
    out[key] = _to_torch_layout(key, np.asarray(var[...], np.float32))
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
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, out)
  return len(sd)


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
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
  weight_dir.save_weights(fv.out, model, vgg)
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
