"""Pure helpers of ``benchmarks/vs_pytorch.py``, shared by both of its sides.

Neither jax nor torch is imported here: each side runs in its own process and
its peak RSS must hold only its own framework. This module holds what both
sides must agree on (the settings, the random batch, the mapping of our config
to the official model's arguments) and the assembly of the JSON line.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Sequence

import ml_collections
import numpy as np

MODES = ("train", "infer")
SIDES = ("official", "ours")
# The official code's task names, in the order of its README's
# --data_cfg_paths (text removal, tampered text detection, text segmentation),
# which is also our task-id order.
OFFICIAL_TASKS = ("text removal", "tampered text detection",
                  "text segmentation")
# The official datasets mark "ignore" pixels of tampered / segmentation labels
# with 128 (compared as 128 / 255 on the [0, 1] labels).
IGNORE_VALUE = 128


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one side's process measures (the same on both sides).

  Attributes:
    mode: 'train' (the full train step) or 'infer' (eval forward, no grad).
    size: image side in pixels (square images, a multiple of 32).
    batch_per_task: train images per task (infer uses batch 1).
    steps: timed calls after the warm-up.
    warmup: untimed calls first (ours compiles before them).
    threads: CPU threads of each side (see vs_pytorch.py).
    official: path of the official UPOCR checkout.
    seed: seed of the random batch and weights.
    interleave: take turns with the other side's process, one call each
      (``vs_pytorch_turns``).
  """
  mode: str
  size: int
  batch_per_task: int
  steps: int
  warmup: int
  threads: int
  official: str
  seed: int = 0
  interleave: bool = False


def check_settings(s: Settings) -> None:
  """One-line ValueErrors naming the bad flag."""
  if s.mode not in MODES:
    raise ValueError(f"--mode: {s.mode!r} is not one of {MODES}")
  if s.size <= 0 or s.size % 32:
    raise ValueError(f"--size {s.size}: must be a positive multiple of 32 "
                     "(the encoder downsamples 32x)")
  for name in ("batch_per_task", "steps", "threads"):
    if getattr(s, name) < 1:
      raise ValueError(f"--{name} must be >= 1, got {getattr(s, name)}")
  if s.warmup < 0:
    raise ValueError(f"--warmup must be >= 0, got {s.warmup}")


def prepare_config(config: ml_collections.ConfigDict, size: int,
                   batch_per_task: int, remat: bool
                   ) -> ml_collections.ConfigDict:
  """A copy of ``config`` doing the official step's work.

  The image size and per-task batch of the benchmark, remat as asked (the
  official ``--swin_use_checkpoint``), and the perceptual and style terms on
  with random VGG16 weights: the official train step always computes them.

  Raises:
    ValueError: a field has no official counterpart (dtype, padding mask,
      patch size, MLP ratio, tasks).
  """
  c = ml_collections.ConfigDict(config.to_dict())
  m = c.model
  if str(m.dtype) != "float32":
    raise ValueError(f"config.model.dtype={m.dtype}: the comparison is "
                     "float32 only (the official CPU path has no autocast)")
  if m.mask_padding:
    raise ValueError("config.model.mask_padding=True: the official model does "
                     "not mask padded tokens; set it False")
  if int(m.patch_size) != 4 or float(m.mlp_ratio) != 4.0:
    raise ValueError(f"config.model.patch_size={m.patch_size}, mlp_ratio="
                     f"{m.mlp_ratio}: the official model fixes both at 4")
  if tuple(m.tasks) != OFFICIAL_TASKS:
    raise ValueError(f"config.model.tasks={tuple(m.tasks)}: the official "
                     f"training uses {OFFICIAL_TASKS}")
  m.remat = bool(remat)
  c.data.image_size = int(size)
  for key in ("text_removal", "tampered_text_detection", "text_segmentation"):
    c.data[key].batch_size = int(batch_per_task)
  c.loss.perceptual = True
  c.loss.style = True
  c.loss.vgg_weights = "random"  # only checked for being set
  return c


OFFICIAL_REMAT = ("same", "on", "off")


def side_remat(side: str, mode: str, remat: bool, official_remat: str
               ) -> bool:
  """Whether ``side`` recomputes its blocks in the backward pass.

  Only a train step has one (the official eval command does not pass
  --swin_use_checkpoint). ``official_remat`` ("same", "on" or "off") sets the
  official side apart from ours (``remat``): "off" is what the official
  README's training command does.
  """
  if side not in SIDES:
    raise ValueError(f"side {side!r} is not one of {SIDES}")
  if official_remat not in OFFICIAL_REMAT:
    raise ValueError(f"--official_remat: {official_remat!r} is not one of "
                     f"{OFFICIAL_REMAT}")
  if mode != "train":
    return False
  if side == "official" and official_remat != "same":
    return official_remat == "on"
  return bool(remat)


def _ints(xs: Sequence[Any]) -> list[str]:
  return [str(int(x)) for x in xs]


def official_argv(config: ml_collections.ConfigDict, size: int) -> list[str]:
  """Arguments of the official ``main.py`` (``utils/parser.py``) that build
  the model and optimizer of ``config`` (after :func:`prepare_config`).

  The official decoder's width is 8x the encoder's embed width, as ours; its
  stage count follows ``--swin_dec_depths``.
  """
  m, o = config.model, config.optim
  enc, dec = m.encoder, m.decoder
  argv = [
      "--device", "cpu",
      "--lr", repr(float(o.lr)),
      "--lr_encoder_ratio", repr(float(o.encoder_lr_ratio)),
      "--weight_decay", repr(float(o.weight_decay)),
      "--clip_max_norm", repr(float(o.clip_grad_norm)),
      "--swin_enc_embed_dim", str(int(enc.embed_dim)),
      "--swin_enc_depths", *_ints(enc.depths),
      "--swin_enc_num_heads", *_ints(enc.num_heads),
      "--swin_enc_window_size", str(int(enc.window_size)),
      "--swin_enc_pretrained_ws", str(int(enc.pretrained_window_size)),
      "--swin_enc_drop_path_rate", repr(float(enc.drop_path_rate)),
      "--swin_dec_depths", *_ints(dec.depths),
      "--swin_dec_num_heads", *_ints(dec.num_heads),
      "--swin_dec_window_size", str(int(dec.window_size)),
      "--swin_dec_pretrained_ws", str(int(dec.pretrained_window_size)),
      "--swin_dec_drop_path_rate", repr(float(dec.drop_path_rate)),
      "--intermediate_output", "true",
      "--pix2pix_size", str(int(size)),
  ]
  if m.remat:
    argv.append("--swin_use_checkpoint")  # per-block torch checkpoint
  return argv


def task_ids(batch_per_task: int) -> list[int]:
  """Task id of each example: the pipeline's layout (task-major blocks)."""
  return [t for t in range(len(OFFICIAL_TASKS)) for _ in range(batch_per_task)]


def random_batch(size: int, ids: Sequence[int], seed: int = 0
                 ) -> dict[str, np.ndarray]:
  """A batch in our pipeline's layout and dtypes, random content (as
  ``benchmarks/train_step.py``'s): the speed depends on neither."""
  rng = np.random.default_rng(seed)
  b, s = len(ids), size
  return {
      "image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
      "target": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
      "valid": rng.random((b, s, s)) > 0.05,
      "text_mask": (rng.random((b, s, s, 1)) > 0.2).astype(np.uint8),
      "task_id": np.asarray(ids, np.int32),
  }


def official_batch(batch: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]],
                              list[str]]:
  """The same batch as the official ``MultiTaskDataloader`` yields it.

  Returns (images (B, 3, S, S) float32 in [0, 1], labels per task name,
  task names): text removal ``label`` (the text-free target) and ``gt_mask``
  (1 on non-text, as ours); tampered / segmentation ``label`` with the ignore
  value 128 / 255 where ours has ``valid`` False.
  """
  nchw = lambda x: np.ascontiguousarray(  # noqa: E731
      np.transpose(x, (0, 3, 1, 2)), dtype=np.float32)
  ids = [int(t) for t in batch["task_id"]]
  images = nchw(batch["image"]) / np.float32(255)
  target = nchw(batch["target"]) / np.float32(255)
  labels = {}
  for t, name in enumerate(OFFICIAL_TASKS):
    sel = np.asarray([i == t for i in ids])
    if not sel.any():
      continue
    if t == 0:
      labels[name] = {"label": target[sel],
                      "gt_mask": nchw(batch["text_mask"][sel])}
    else:
      label = target[sel].copy()
      invalid = ~batch["valid"][sel][:, None]
      label[np.broadcast_to(invalid, label.shape)] = IGNORE_VALUE / 255
      labels[name] = {"label": label}
  return images, labels, [OFFICIAL_TASKS[t] for t in ids]


def summarize(times: Sequence[float]) -> dict[str, Any]:
  """Median, min, max and every timed call, in seconds."""
  if not times:
    raise ValueError("no timed calls (--steps must be >= 1)")
  return {"median_s": round(statistics.median(times), 4),
          "min_s": round(min(times), 4), "max_s": round(max(times), 4),
          "all_s": [round(t, 4) for t in times]}


def combine(mode: str, official: dict[str, Any], ours: dict[str, Any],
            meta: dict[str, Any]) -> dict[str, Any]:
  """The JSON record of one mode from the two sides' reports.

  ``speedup`` = official median / ours median (> 1: ours is faster);
  ``rss_ratio`` = ours peak RSS / official peak RSS (< 1: ours uses less);
  ``params_match``: both sides built a model of the same parameter count.
  """
  for side, rep in (("official", official), ("ours", ours)):
    missing = [k for k in ("median_s", "max_rss_bytes") if k not in rep]
    if missing:
      raise ValueError(f"the {side} side's report lacks {missing}")
  return {
      "benchmark": "vs_pytorch", "mode": mode, **meta,
      "official": official, "ours": ours,
      "speedup": round(official["median_s"] / ours["median_s"], 3),
      "rss_ratio": round(ours["max_rss_bytes"] / official["max_rss_bytes"],
                         3),
      "params_match": official.get("params") == ours.get("params"),
      **({"speedup_paired": paired_speedup(official["all_s"], ours["all_s"])}
         if meta.get("interleaved") else {}),
  }


def paired_speedup(official: Sequence[float], ours: Sequence[float]) -> float:
  """Median over rounds of official / ours, call i of each side paired (the
  calls of ``--interleave`` alternate, so call i of both ran side by side)."""
  if len(official) != len(ours) or not official:
    raise ValueError(f"paired_speedup: {len(official)} official and "
                     f"{len(ours)} ours calls; need the same count, > 0")
  return round(statistics.median(o / u for o, u in zip(official, ours)), 3)
