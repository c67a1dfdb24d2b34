"""The official PyTorch UPOCR side of ``benchmarks/vs_pytorch.py``.

Imported only in the official side's process (torch is imported here, and
jax never is). The official code is imported from ``Settings.official`` (a
checkout the user fetched; nothing of it is in this repository) after
:func:`install_shims`, which makes it run on a CPU-only machine with a current
Python and torch and without timm, torchvision or wandb:

* ``timm.models.layers`` (DropPath, to_2tuple, trunc_normal_) and
  ``torchvision.models.vgg16`` stand-ins when those packages are missing; the
  VGG16 stand-in has torchvision's ``features`` layers (random weights either
  way, so the work is the same);
* ``wandb``: imported by ``engine/train.py``, used only with ``--wandb true``;
* ``collections.Iterable`` (removed in Python 3.10; the decoder imports it);
* ``.cuda()`` / ``torch.device('cuda')``: the attention's logit clamp calls
  ``.cuda()`` and the task prompt moves its ids to 'cuda'; without CUDA
  ``Tensor.cuda`` returns the tensor and the task prompt uses its weight's
  device;
* the non-distributed model gets a ``.module`` attribute: ``engine/train.py``
  reads ``model.module.vgg16`` (it only ever ran under DDP).

The train step is the official ``engine.train.train_one_epoch`` itself, fed
one batch repeatedly; the time of each iteration is taken between the loop's
requests for the next batch. Inference is ``engine/val.py``'s forward: eval
mode, no grad, the last output clamped to [0, 1].
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import contextlib
import importlib
import os
import resource
import sys
import time
import types
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from benchmarks import vs_pytorch_common as common
from benchmarks import vs_pytorch_turns as turns


# ---------------------------------------------------------------- stand-ins


class DropPath(nn.Module):
  """timm's DropPath: drops whole residual branches per sample in training,
  scaling the kept ones by 1 / keep_prob."""

  def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
    super().__init__()
    self.drop_prob = drop_prob
    self.scale_by_keep = scale_by_keep

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if self.drop_prob == 0.0 or not self.training:
      return x
    keep = 1 - self.drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = x.new_empty(shape).bernoulli_(keep)
    if keep > 0.0 and self.scale_by_keep:
      mask.div_(keep)
    return x * mask


def to_2tuple(x: Any) -> tuple:
  """timm's to_2tuple: iterables pass through, scalars are doubled."""
  if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
    return tuple(x)
  return (x, x)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0,
                  a: float = -2.0, b: float = 2.0) -> torch.Tensor:
  """timm's trunc_normal_ (the same signature as torch's)."""
  return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


# torchvision's VGG16 ("D"): channels per conv, "M" a 2x2 max-pool.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
              512, 512, 512, "M", 512, 512, 512, "M")


class _VGG16(nn.Module):
  """torchvision.models.vgg16()'s ``features`` (the official loss reads
  ``features[:17]``); random weights, as torchvision's without weights."""

  def __init__(self):
    super().__init__()
    layers, c = [], 3
    for v in _VGG16_CFG:
      if v == "M":
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      else:
        layers += [nn.Conv2d(c, v, kernel_size=3, padding=1),
                   nn.ReLU(inplace=True)]
        c = v
    self.features = nn.Sequential(*layers)


def _official(name: str) -> types.ModuleType:
  """A module of the official checkout (importable once ``run`` has put the
  checkout on sys.path, so not at the top of this file)."""
  return importlib.import_module(name)


def _module(name: str, **attrs) -> types.ModuleType:
  mod = types.ModuleType(name)
  mod.__dict__.update(attrs)
  sys.modules[name] = mod
  return mod


def _importable(name: str) -> bool:
  try:
    __import__(name)
    return True
  except ImportError:
    return False


def install_shims() -> list[str]:
  """Installs the stand-ins the official code needs here; returns their
  names (recorded in the JSON line)."""
  done = []
  if not _importable("timm"):
    layers = _module("timm.models.layers", DropPath=DropPath,
                     to_2tuple=to_2tuple, trunc_normal_=trunc_normal_)
    models = _module("timm.models", layers=layers)
    _module("timm", models=models)
    done.append("timm.models.layers")
  if not _importable("torchvision"):
    models = _module("torchvision.models", vgg16=_VGG16)
    _module("torchvision", models=models)
    done.append("torchvision.models.vgg16")
  if not _importable("wandb"):
    _module("wandb", init=lambda *a, **k: None, log=lambda *a, **k: None)
    done.append("wandb")
  if not hasattr(collections, "Iterable"):
    collections.Iterable = collections.abc.Iterable
    done.append("collections.Iterable")
  if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *a, **k: self
    done.append("Tensor.cuda")
  # Per-block checkpoints: the official call predates use_reentrant (and
  # gets torch's default, reentrant); only the warning is silenced.
  warnings.filterwarnings("ignore", message=r".*use_reentrant.*")
  warnings.filterwarnings("ignore", category=FutureWarning,
                          message=r".*torch\.cuda\.amp.*")
  warnings.filterwarnings("ignore", message=r"torch\.meshgrid")
  return done


def _patch_task_prompt() -> None:
  """TaskPrompt.forward with the ids on the embedding's device (the official
  one moves them to 'cuda')."""
  task_prompt = _official("models.task_prompt")

  def forward(self, tasks, size):
    device = self.task_embedding.weight.device
    ids = torch.tensor([self.task_list.index(t) for t in tasks],
                       dtype=torch.long, device=device)
    emb = self.task_embedding(ids)[:, :, None, None]
    return emb.expand(-1, -1, size[0], size[1])

  if not torch.cuda.is_available():
    task_prompt.TaskPrompt.forward = forward


class _AsDDP(nn.Module):
  """The model seen through ``.module`` as under DistributedDataParallel."""

  def __init__(self, module: nn.Module):
    super().__init__()
    self.module = module

  def forward(self, *args, **kwargs):
    return self.module(*args, **kwargs)


# ---------------------------------------------------------------- the sides


def _official_args(config, s: common.Settings, evaluate: bool
                   ) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      parents=[_official("utils.parser").get_args_parser()])
  args = parser.parse_args(common.official_argv(config, s.size))
  # What main.py's init_distributed_mode and process_args would set.
  args.distributed = False
  args.eval = evaluate
  args.tasks = list(common.OFFICIAL_TASKS)
  args.data_cfgs = [{"TYPE": t} for t in common.OFFICIAL_TASKS]
  args.print_freq = 10**9  # log_every prints the first and last iterations
  return args


class _TimedLoader:
  """Yields one batch ``n`` times and times each iteration of the loop
  consuming it: from handing the batch out to the request for the next."""

  def __init__(self, batch, n: int, interleave: bool):
    self.batch, self.n, self.interleave = batch, n, interleave
    self.times: list[float] = []

  def __len__(self) -> int:
    return self.n

  def __iter__(self) -> Iterator:
    for _ in range(self.n):
      turns.wait_turn(self.interleave)
      t = time.perf_counter()
      yield self.batch
      self.times.append(time.perf_counter() - t)
    turns.finished(self.interleave)


def _torch_batch(s: common.Settings, ids: list[int]):
  images, labels, tasks = common.official_batch(
      common.random_batch(s.size, ids, s.seed))
  labels = {k: {n: torch.from_numpy(v) for n, v in d.items()}
            for k, d in labels.items()}
  return torch.from_numpy(images), labels, tasks


def _params(model: nn.Module) -> int:
  # The count main.py prints (the frozen VGG16 excluded).
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _train(config, s: common.Settings) -> dict[str, Any]:
  args = _official_args(config, s, evaluate=False)
  model = _official("models").build_model(args)
  optim = _official("optim")
  criterion = optim.build_criterion(args)
  optimizer = optim.build_optimizer(model, args)
  batch = _torch_batch(s, common.task_ids(s.batch_per_task))
  loader = _TimedLoader(batch, s.warmup + s.steps, s.interleave)
  train_one_epoch = _official("engine.train").train_one_epoch
  # train_one_epoch logs to stdout; stdout carries this process's JSON.
  with contextlib.redirect_stdout(sys.stderr):
    stats = train_one_epoch(_AsDDP(model), criterion, loader, optimizer,
                            epoch=0, lr_scheduler=[args.lr], args=args)
  times = loader.times[s.warmup:]
  return {**common.summarize(times), "params": _params(model),
          # The official logger's average over every iteration.
          "loss_mean": float(stats["loss"]), "batch": len(batch[2]),
          "checkpoint": bool(args.swin_use_checkpoint)}


def _infer(config, s: common.Settings) -> dict[str, Any]:
  args = _official_args(config, s, evaluate=True)  # no VGG16 is built
  model = _official("models").build_model(args)
  model.eval()
  images, _, tasks = _torch_batch(s, [0])
  times = []
  with torch.no_grad():
    for i in range(s.warmup + s.steps):
      turns.wait_turn(s.interleave)
      t = time.perf_counter()
      out = torch.clamp(model(images, tasks=tasks)[-1], min=0, max=1)
      if i >= s.warmup:
        times.append(time.perf_counter() - t)
    turns.finished(s.interleave)
  return {**common.summarize(times), "params": _params(model),
          "output_mean": float(out.mean()), "batch": 1}


def run(config, s: common.Settings) -> dict[str, Any]:
  """Times the official train step or eval forward in this process.

  Args:
    config: our config after ``common.prepare_config`` (mapped to the
      official arguments by ``common.official_argv``).
    s: the benchmark settings; ``s.official`` is the checkout to import.

  Returns:
    the timing summary, parameter count, peak RSS and versions.
  """
  if not os.path.isfile(os.path.join(s.official, "engine", "train.py")):
    raise FileNotFoundError(f"--official {s.official}: not an official UPOCR "
                            "checkout (no engine/train.py)")
  torch.set_num_threads(s.threads)
  torch.manual_seed(s.seed)
  shims = install_shims()
  sys.path.insert(0, os.path.abspath(s.official))
  _patch_task_prompt()
  out = _train(config, s) if s.mode == "train" else _infer(config, s)
  out.update({
      "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                       * 1024,
      "threads": torch.get_num_threads(), "shims": shims,
      "torch": torch.__version__,
  })
  return out
