"""The UPOCR training losses (official ``optim/criterion``, ``engine/train``).

All functions are pure and jittable. ``upocr_loss`` computes every task's loss
inside one compiled function for a fixed batch layout: the task of each example
is STATIC (a ``BatchLayout``), so each task's examples are taken out of the
batch by static slices rather than weighted by masks. Nothing of one task's
examples reaches another task's loss, and the frozen VGG16 only sees the
text-removal examples (3 x their number: output, composite and target in one
call).

Sharding: the global batch is ``num_shards`` equal contiguous blocks (one per
data shard) that repeat the same per-shard task pattern
(input_pipeline/layout.py). A task's examples are selected as
``x.reshape(D, B // D, ...)[:, positions]`` and flattened back, so every data
shard keeps its own examples (no collective, no imbalance) when axis 0 is split
over D (or a divisor of D) devices.

Reductions (matching the official code, where each task's loss is computed on
that task's sub-batch):

* text removal, MSR: per scale s in (1/4, 1/2, 1) the target and the non-text
  mask are subsampled with PyTorch's ``nearest`` (pixel ``i * stride``, i.e.
  ``x[::stride]``), and
  ``w_text * mean|(1-m) o - (1-m) g| + w_nontext * mean|m o - m g|``, each mean
  over all N x 3 x h x w elements of the task's examples.
* perceptual: ``sum_i mean|F_i(out) - F_i(gt)| + mean|F_i(comp) - F_i(gt)|``
  over VGG pool1..3, ``comp = m * image + (1 - m) * out``; style: the same with
  Gram matrices ``F^T F / (C h w)`` per example.
* segmentation / tampered text: per scale, target subsampled as above,
  elementwise smooth L1 (beta 1), mean over the valid elements of all the task's
  examples pooled together (not per example), times the scale weight. The
  official code drops elements equal to 128/255 channel by channel; the
  pipeline's ignore is grey in all three channels, so ``batch['valid']``
  broadcast over channels selects the same elements.
* Terms are multiplied by their weights (MSR 1, perceptual 0.01, style 120),
  summed within the task, times the task weight (1), summed over tasks.

With several data shards, the official DDP run averages per-GPU losses; here the
means are over the whole global sub-batch of a task. The two agree except for
the seg/ttd valid-pixel weighting across shards (a per-GPU mean over valid
pixels vs. a global one), and a global mean keeps the loss independent of the
mesh.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from input_pipeline.layout import BatchLayout
from upocr_jax.tasks import SEGMENTATION, TAMPERED, TASK_KEYS, TEXT_REMOVAL

Array = jax.Array

# Metric names as the official code logs them (and the fixture stores them).
METRIC_NAMES = ("textremoval_MSR_loss", "textremoval_prc_loss",
                "textremoval_style_loss", "ttd_l1_loss", "textseg_l1_loss",
                "textseg_pos_loss", "textseg_neg_loss", "total")


def select_task(x: Array, layout: BatchLayout, task: int) -> Array:
  """``task``'s examples of ``x`` (axis 0 = batch), shard by shard.

  Static slices of the (D, B // D, ...) view, concatenated along the unsharded
  axis 1, so that data shard d's examples stay on shard d.
  """
  if x.shape[0] != layout.batch_size:
    raise ValueError(f"batch of {x.shape[0]} does not match the layout's "
                     f"{layout.batch_size} examples")
  pos = layout.positions(task)
  d = layout.num_shards
  xs = x.reshape((d, x.shape[0] // d) + x.shape[1:])
  runs, start = [], 0
  for i in range(1, len(pos) + 1):  # Contiguous runs of positions.
    if i == len(pos) or pos[i] != pos[i - 1] + 1:
      runs.append(xs[:, pos[start]:pos[i - 1] + 1])
      start = i
  xs = runs[0] if len(runs) == 1 else jnp.concatenate(runs, axis=1)
  return xs.reshape((d * len(pos),) + x.shape[1:])


def to_unit_float(x: Array) -> Array:
  """uint8 0..255 -> float32 [0, 1] (as torchvision's ToTensor); float as is."""
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x.astype(jnp.float32)


def _subsample(x: Array, h: int) -> Array:
  """PyTorch ``nearest`` to height h (integer factor): pixels 0, s, 2s, ..."""
  s = x.shape[1] // h
  if s * h != x.shape[1]:
    raise ValueError(f"map of height {x.shape[1]} is not an integer multiple "
                     f"of the output height {h}")
  return x[:, ::s, ::s] if s > 1 else x


def msr_loss(outputs: Sequence[Array], mask: Array, gt: Array,
             weights: Sequence[Sequence[float]]) -> Array:
  """Multi-scale masked L1; mask (N,H,W,1) is 1 on NON-text; weights per scale
  are (text, non-text)."""
  total = 0.0
  for out, (w_text, w_nontext) in zip(outputs, weights):
    m = _subsample(mask, out.shape[1])
    g = _subsample(gt, out.shape[1])
    total += w_text * jnp.mean(jnp.abs((1 - m) * out - (1 - m) * g))
    total += w_nontext * jnp.mean(jnp.abs(m * out - m * g))
  return total


def gram_matrix(feat: Array) -> Array:
  """(N,h,w,C) -> (N,C,C) Gram matrix divided by C*h*w, in float32."""
  n, h, w, c = feat.shape
  f = feat.astype(jnp.float32).reshape(n, h * w, c)
  # HIGHEST: the official code forces float32 here; bf16 matmul passes (TPU
  # default) would change the large style term noticeably.
  return jnp.einsum("nkc,nkd->ncd", f, f,
                    precision=jax.lax.Precision.HIGHEST) / (c * h * w)


def perceptual_and_style(feat_out: Sequence[Array], feat_comp: Sequence[Array],
                         feat_gt: Sequence[Array]) -> tuple[Array, Array]:
  """Unweighted (perceptual, style) sums over the VGG levels."""
  prc, style = 0.0, 0.0
  for fo, fc, fg in zip(feat_out, feat_comp, feat_gt):
    fo, fc, fg = (f.astype(jnp.float32) for f in (fo, fc, fg))
    prc += jnp.mean(jnp.abs(fo - fg)) + jnp.mean(jnp.abs(fc - fg))
    go, gc, gg = gram_matrix(fo), gram_matrix(fc), gram_matrix(fg)
    style += jnp.mean(jnp.abs(go - gg)) + jnp.mean(jnp.abs(gc - gg))
  return prc, style


def smooth_l1(pred: Array, target: Array) -> Array:
  """Elementwise smooth L1 with beta 1 (``F.smooth_l1_loss``)."""
  d = jnp.abs(pred - target)
  return jnp.where(d < 1.0, 0.5 * d * d, d - 0.5)


def _masked_mean(x: Array, m: Array) -> Array:
  # max(., 1): an all-ignore sub-batch gives 0 instead of the official NaN.
  return jnp.sum(jnp.where(m, x, 0.0)) / jnp.maximum(jnp.sum(m), 1)


def multiscale_smooth_l1(outputs: Sequence[Array], target: Array, valid: Array,
                         weights: Sequence[float]
                         ) -> tuple[Array, Array, Array]:
  """(l1, pos, neg) losses; ``valid`` (N,H,W) False on ignore pixels.

  l1: mean over valid elements; pos / neg (logged only, as officially): means
  over the elements whose target is 1 / 0.
  """
  l1, pos, neg = 0.0, 0.0, 0.0
  for out, w in zip(outputs, weights):
    t = _subsample(target, out.shape[1])
    v = jnp.broadcast_to(_subsample(valid, out.shape[1])[..., None], t.shape)
    loss = smooth_l1(out, t)
    l1 += w * _masked_mean(loss, v)
    pos += w * _masked_mean(loss, t == 1.0)
    neg += w * _masked_mean(loss, t == 0.0)
  return l1, pos, neg


def upocr_loss(outputs: Sequence[Array], batch: Mapping[str, Array],
               vgg: Callable[[Array], Sequence[Array]] | None,
               loss_config: ml_collections.ConfigDict,
               layout: BatchLayout) -> tuple[Array, dict[str, Array]]:
  """The total UPOCR loss of a multi-task batch and its per-task terms.

  Args:
    outputs: the model's (out_1/4, out_1/2, out_1) NHWC arrays for the batch.
    batch: ``image``, ``target`` (uint8 0..255 or float [0, 1]), ``valid``
      (B,H,W) bool, ``text_mask`` (B,H,W,1) (1 = non-text); see
      input_pipeline/layout.py. ``task_id`` is not read: ``layout`` is.
    vgg: callable NHWC [0,1] images -> [pool1, pool2, pool3] (e.g. a
      ``VGG16Features``); only called when perceptual or style is on.
    loss_config: ``config.loss``; static.
    layout: the static task layout of the batch.

  Returns:
    (total, metrics): metrics holds every name of ``METRIC_NAMES`` (terms after
    their term weights, before the task weight; 0 for tasks absent from the
    layout; ``textseg_pos/neg_loss`` are logged only, not in the total).
  """
  lc = loss_config
  tw = lc.task_weights
  zero = jnp.zeros((), jnp.float32)
  metrics = {k: zero for k in METRIC_NAMES}
  outputs = [o.astype(jnp.float32) for o in outputs]
  total = zero

  if layout.count(TEXT_REMOVAL):
    sel = lambda x: select_task(x, layout, TEXT_REMOVAL)  # noqa: E731
    outs = [sel(o) for o in outputs]
    gt = to_unit_float(sel(batch["target"]))
    mask = sel(batch["text_mask"]).astype(jnp.float32)
    msr = lc.msr_weight * msr_loss(outs, mask, gt, lc.msr_weights)
    metrics["textremoval_MSR_loss"] = msr
    tr = msr
    if lc.perceptual or lc.style:
      if vgg is None:
        raise ValueError("upocr_loss: perceptual/style losses are on but no "
                         "VGG was given (config.loss.vgg_weights)")
      image = to_unit_float(sel(batch["image"]))
      out = outs[-1]
      comp = mask * image + (1 - mask) * out
      n = out.shape[0]
      # One VGG pass over output and composite (2n examples), stacked example
      # by example (not concatenated) so that each data shard's block holds
      # its own 2k images, and one over the target: in a single pass the
      # backward also ran the target's third of the batch, whose gradient is
      # dropped.
      x = jnp.stack([out, comp], axis=1)
      with jax.named_scope("vgg"):
        feats = [f.reshape((n, 2) + f.shape[1:])
                 for f in vgg(x.reshape((2 * n,) + out.shape[1:]))]
        feat_gt = vgg(jax.lax.stop_gradient(gt))
      prc, style = perceptual_and_style([f[:, 0] for f in feats],
                                        [f[:, 1] for f in feats], feat_gt)
      if lc.perceptual:
        metrics["textremoval_prc_loss"] = lc.perceptual_weight * prc
        tr = tr + metrics["textremoval_prc_loss"]
      if lc.style:
        metrics["textremoval_style_loss"] = lc.style_weight * style
        tr = tr + metrics["textremoval_style_loss"]
    total = total + tw[TASK_KEYS[TEXT_REMOVAL]] * tr

  for task, prefix, weights in (
      (TAMPERED, "ttd", lc.ttd_scale_weights),
      (SEGMENTATION, "textseg", lc.seg_scale_weights)):
    if not layout.count(task):
      continue
    sel = lambda x, t=task: select_task(x, layout, t)  # noqa: E731
    l1, pos, neg = multiscale_smooth_l1(
        [sel(o) for o in outputs], to_unit_float(sel(batch["target"])),
        sel(batch["valid"]).astype(bool), weights)
    metrics[f"{prefix}_l1_loss"] = l1
    if task == SEGMENTATION:
      metrics["textseg_pos_loss"], metrics["textseg_neg_loss"] = pos, neg
    total = total + tw[TASK_KEYS[task]] * l1

  metrics["total"] = total
  return total, metrics
