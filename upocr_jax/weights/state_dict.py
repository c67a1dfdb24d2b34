"""State dicts of PyTorch checkpoints: reading them and filling our modules.

The machinery shared by the converters of the official UPOCR model
(``official.py``), the loss's VGG16 (``vgg_weights.py``) and the FID Inception
(``inception_weights.py``): reading ``.pth``/``.pt`` (needs torch: ``pip install
upocr_jax[torch]``), ``.npz``, ``.safetensors`` or a mapping key -> array (the
official ``{'model': ...}`` wrapping and the DistributedDataParallel ``module.``
prefix are accepted); PyTorch <-> our array layouts; matching a state dict
against a module's variables with a report of missing, unexpected and
mis-shaped keys.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from safetensors.numpy import load_file as load_safetensors


def _load_pth(path: str) -> Mapping[str, Any]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(f"reading {path} needs torch: pip install "
                      "'upocr_jax[torch]' (or convert it to .npz/.safetensors "
                      "elsewhere)") from e
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
      sd = load_safetensors(path)
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


def to_jax_layout(key: str, value: np.ndarray) -> np.ndarray:
  """PyTorch layout -> ours: Linear (out,in)->(in,out), Conv OIHW->HWIO."""
  if key.endswith("logit_scale"):
    return value.reshape(-1)
  if value.ndim == 2 and key.endswith("weight") and "task_embedding" not in key:
    return value.T
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def to_torch_layout(key: str, value: np.ndarray) -> np.ndarray:
  """Ours -> PyTorch layout: the inverse of ``to_jax_layout``."""
  if key.endswith("logit_scale"):
    return value.reshape(-1, 1, 1)
  if value.ndim == 2 and key.endswith("weight") and "task_embedding" not in key:
    return value.T
  if value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
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


def fill(module: nnx.Module, var_type: type[nnx.Variable],
         sd: dict[str, np.ndarray], key_fn: Callable[[tuple[Any, ...]], str],
         report: LoadReport, consumed: set[str]) -> nnx.Module:
  """``module`` with each ``var_type`` variable set from ``sd[key_fn(path)]``.

  Keys found are added to ``consumed``; missing and mis-shaped ones to
  ``report`` (those variables keep their values).
  """
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
  return to_torch_layout(key, np.empty(shape, np.float32)).shape


def build(factory: Callable[[], nnx.Module], strict: bool) -> nnx.Module:
  """The module to fill: abstract when ``strict`` (every parameter will be
  overwritten, so the random init is skipped), else initialised."""
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


def finish(report: LoadReport, strict: bool, source_name: str) -> None:
  """Raises StrictLoadError (strict) or logs what ``report`` found wrong;
  nothing if ok."""
  if report.ok:
    return
  if strict:
    raise StrictLoadError(report, source_name)
  logging.warning("%s", report.describe(source_name))


def source_name(source: str | os.PathLike | Mapping[str, Any]) -> str:
  """How errors name a state-dict source: its path, or 'state dict'."""
  return (os.fspath(source) if isinstance(source, (str, os.PathLike))
          else "state dict")
