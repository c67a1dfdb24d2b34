"""Losses: fixture values, per-task isolation, VGG batch, ignore, sharding."""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from configs import loss_optim_config
from input_pipeline import schema
from input_pipeline.layout import BatchLayout
from tests import fixture_utils as fu
from upocr_jax import config_checks
from upocr_jax.tasks import SEGMENTATION, TAMPERED, TASK_KEYS, TEXT_REMOVAL
from upocr_jax.models.vgg import VGG16Features
from upocr_jax.train import losses
from upocr_jax.weights import vgg_weights

TASK_IDS = {name: i for i, name in enumerate(schema.TASKS)}


def _paper_loss_config():
  lc = loss_optim_config.get_loss_config("paper")
  lc.vgg_weights = "unused-here"  # The VGG is passed in directly.
  return lc


@functools.lru_cache(maxsize=None)
def _fixture_result():
  f = fu.fixture()
  vgg = vgg_weights.load_vgg({k: v for k, v in fu.official_state_dict().items()
                          if k.startswith("vgg16.")})
  tasks = [TASK_IDS[t] for t in f["loss/input/tasks"]]
  n, _, h, w = f["loss/input/images"].shape
  target = np.zeros((n, h, w, 3), np.float32)
  mask = np.ones((n, h, w, 1), np.float32)
  tr = [i for i, t in enumerate(tasks) if t == TEXT_REMOVAL]
  target[tr] = fu.nchw_to_nhwc(f["loss/tr_gt"])
  mask[tr] = fu.nchw_to_nhwc(f["loss/tr_mask"])
  target[tasks.index(SEGMENTATION)] = fu.nchw_to_nhwc(
      f["loss/seg_target"])[0]
  target[tasks.index(TAMPERED)] = fu.nchw_to_nhwc(
      f["loss/ttd_target"])[0]
  ignore = np.float32(128) / np.float32(255)
  batch = dict(image=fu.nchw_to_nhwc(f["loss/input/images"]), target=target,
               valid=~np.all(target == ignore, axis=-1), text_mask=mask)
  outputs = [fu.nchw_to_nhwc(f[f"loss/output/{i}"]) for i in range(3)]
  layout = BatchLayout.from_task_ids(tasks)
  lc = _paper_loss_config()
  _, metrics = jax.jit(
      lambda o, b: losses.upocr_loss(o, b, vgg, lc, layout))(outputs, batch)
  return jax.device_get(metrics)


@pytest.mark.parametrize("name", losses.METRIC_NAMES)
def test_fixture_loss_terms(name):
  got = float(_fixture_result()[name])
  want = float(fu.fixture()[f"loss/{name}"])
  assert abs(got - want) <= 1e-5 * abs(want), (name, got, want)


# --------------------------------------------------------------------------
# Synthetic batches: 2 data shards of [removal x2, tampered x1, segmentation x1]
# --------------------------------------------------------------------------
S = 32
LAYOUT = BatchLayout.from_counts((2, 1, 1), num_shards=2)


def _random_batch(seed=0):
  rng = np.random.default_rng(seed)
  b = LAYOUT.batch_size
  target = rng.integers(0, 256, (b, S, S, 3)).astype(np.uint8)
  valid = np.ones((b, S, S), bool)
  for i, t in enumerate(LAYOUT.task_ids):
    if t != TEXT_REMOVAL:
      target[i] = rng.choice([0, 255], (S, S, 3)).astype(np.uint8)
      ig = rng.random((S, S)) < 0.2
      target[i][ig] = 128
      valid[i] = ~ig
  mask = np.ones((b, S, S, 1), np.uint8)
  for i, t in enumerate(LAYOUT.task_ids):
    if t == TEXT_REMOVAL:
      mask[i] = (rng.random((S, S, 1)) < 0.7).astype(np.uint8)
  batch = dict(image=rng.integers(0, 256, (b, S, S, 3)).astype(np.uint8),
               target=target, valid=valid, text_mask=mask)
  outputs = [rng.normal(0.5, 0.6, (b, S // s, S // s, 3)).astype(np.float32)
             for s in (4, 2, 1)]
  return outputs, batch


class _RecordingVGG:
  """A small random VGG16 that records the batch size it is traced with."""

  def __init__(self):
    self.vgg = VGG16Features(rngs=nnx.Rngs(0))
    self.batch_sizes = []

  def __call__(self, x):
    self.batch_sizes.append(x.shape[0])
    return self.vgg(x)


@functools.lru_cache(maxsize=None)
def _synthetic_fn():
  vgg = _RecordingVGG()
  fn = jax.jit(lambda o, b: losses.upocr_loss(o, b, vgg, _paper_loss_config(),
                                              LAYOUT))
  return fn, vgg


def test_vgg_sees_only_text_removal_examples():
  fn, vgg = _synthetic_fn()
  fn(*_random_batch())
  # Output and composite of the 4 removal examples (one pass, with a
  # gradient), then their targets (no gradient); not the batch of 8.
  n = LAYOUT.count(TEXT_REMOVAL)
  assert vgg.batch_sizes == [2 * n, n] == [8, 4]


def test_no_gradient_flows_through_the_vgg_target_pass():
  """The target pass stays out of the backward (the reason it is its own)."""
  vgg = _RecordingVGG()
  outs, batch = _random_batch()
  loss = lambda o: losses.upocr_loss(o, batch, vgg, _paper_loss_config(),
                                     LAYOUT)[0]
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(outs))
  # The leading dim of every convolution's result: 7 convs per VGG pass.
  batches = collections.Counter(
      int(m) for m in re.findall(r"f32\[(\d+),[\d,]*\] = conv_general_dilated",
                                 jaxpr))
  n = LAYOUT.count(TEXT_REMOVAL)
  assert batches == {2 * n: 14, n: 7}, batches  # forward + backward; forward


@pytest.mark.parametrize("changed", [TEXT_REMOVAL, TAMPERED,
                                     SEGMENTATION])
def test_other_tasks_examples_do_not_change_a_task_loss(changed):
  fn, _ = _synthetic_fn()
  outputs, batch = _random_batch(1)
  # Read the result before editing the inputs in place: on CPU, jax may use
  # the numpy buffers without a copy while the step still runs.
  base = jax.device_get(fn(outputs, batch)[1])
  other_outputs, other_batch = _random_batch(2)
  idx = [i for i, t in enumerate(LAYOUT.task_ids) if t == changed]
  for o, oo in zip(outputs, other_outputs):
    o[idx] = oo[idx]
  for k in batch:
    batch[k][idx] = other_batch[k][idx]
  _, new = fn(outputs, batch)
  prefix = {TEXT_REMOVAL: "textremoval_", TAMPERED: "ttd_",
            SEGMENTATION: "textseg_"}
  for name in losses.METRIC_NAMES[:-1]:
    a, b = float(base[name]), float(new[name])
    if name.startswith(prefix[changed]):
      assert abs(a - b) > 1e-3 * abs(a), (name, a, b)
    else:
      # Equal up to float noise (XLA CPU may split a reduction differently).
      assert abs(a - b) <= 1e-6 * abs(a), (name, a, b)


def _np_smooth_l1_task(outputs, batch, task, weights):
  """Reference: pooled mean over the valid elements of all task examples."""
  idx = [i for i, t in enumerate(LAYOUT.task_ids) if t == task]
  total = 0.0
  for o, w in zip(outputs, weights):
    s = S // o.shape[1]
    t = batch["target"][idx][:, ::s, ::s].astype(np.float64) / 255
    v = np.repeat(batch["valid"][idx][:, ::s, ::s, None], 3, -1)
    d = np.abs(o[idx].astype(np.float64) - t)
    loss = np.where(d < 1, 0.5 * d * d, d - 0.5)
    total += w * loss[v].mean()
  return total


def test_ignore_pixels_excluded_and_pooled_mean():
  fn, _ = _synthetic_fn()
  outputs, batch = _random_batch(3)
  _, m = fn(outputs, batch)
  for task, name in ((TAMPERED, "ttd_l1_loss"),
                     (SEGMENTATION, "textseg_l1_loss")):
    want = _np_smooth_l1_task(outputs, batch, task, (5, 6, 10))
    np.testing.assert_allclose(float(m[name]), want, rtol=1e-5)
  # Wild predictions on ignore pixels change nothing.
  for o in outputs:
    s = S // o.shape[1]
    o[~batch["valid"][:, ::s, ::s]] = 1e3
  _, m2 = fn(outputs, batch)
  for name in ("ttd_l1_loss", "textseg_l1_loss"):
    np.testing.assert_allclose(float(m2[name]), float(m[name]), rtol=1e-6)


def test_ignore_pixels_get_no_gradient():
  outputs, batch = _random_batch(4)
  lc = loss_optim_config.get_loss_config("tiny")
  grads = jax.jit(jax.grad(
      lambda o: losses.upocr_loss(o, batch, None, lc, LAYOUT)[0]))(outputs)
  g = np.asarray(grads[-1])
  ignored = ~batch["valid"]
  ignored[np.asarray(LAYOUT.task_ids) == TEXT_REMOVAL] = False
  assert ignored.any() and np.all(g[ignored] == 0)
  assert np.any(g[batch["valid"]] != 0)


def test_perceptual_and_style_off_skip_vgg():
  outputs, batch = _random_batch(5)
  lc = loss_optim_config.get_loss_config("tiny")
  total, m = jax.jit(
      lambda o, b: losses.upocr_loss(o, b, None, lc, LAYOUT))(outputs, batch)
  assert float(m["textremoval_prc_loss"]) == 0.0
  assert float(m["textremoval_style_loss"]) == 0.0
  want = sum(float(m[k]) for k in ("textremoval_MSR_loss", "ttd_l1_loss",
                                   "textseg_l1_loss"))
  np.testing.assert_allclose(float(total), want, rtol=1e-6)
  assert vgg_weights.load_loss_vgg(lc) is None


def test_task_and_term_weights():
  outputs, batch = _random_batch(6)
  lc = loss_optim_config.get_loss_config("tiny")
  _, m = losses.upocr_loss(outputs, batch, None, lc, LAYOUT)
  lc.task_weights.text_segmentation = 0.0
  lc.msr_weight = 2.0
  total, m2 = losses.upocr_loss(outputs, batch, None, lc, LAYOUT)
  np.testing.assert_allclose(float(m2["textremoval_MSR_loss"]),
                             2 * float(m["textremoval_MSR_loss"]), rtol=1e-6)
  np.testing.assert_allclose(
      float(total), float(m2["textremoval_MSR_loss"]) + float(m["ttd_l1_loss"]),
      rtol=1e-6)


def test_missing_vgg_weights_is_a_config_error():
  lc = loss_optim_config.get_loss_config("paper")
  with pytest.raises(ValueError, match=r"config\.loss\.vgg_weights"):
    config_checks.check_loss(lc)
  with pytest.raises(ValueError, match=r"config\.loss\.vgg_weights"):
    vgg_weights.load_loss_vgg(lc)
  lc.style = False
  with pytest.raises(ValueError, match=r"config\.loss\.perceptual is on"):
    config_checks.check_loss(lc)
  lc.vgg_weights = "/some/vgg16.pth"
  config_checks.check_loss(lc)


def test_layout_helpers():
  lay = BatchLayout.from_data_config(
      loss_optim_config.ml_collections.ConfigDict(
          {k: {"batch_size": 4} for k in TASK_KEYS}), num_shards=2)
  assert lay.task_ids == (0, 0, 1, 1, 2, 2) * 2
  assert lay == BatchLayout.from_task_ids(lay.task_ids, 2)
  assert TASK_KEYS == schema.TASK_KEYS
  assert (TEXT_REMOVAL, TAMPERED, SEGMENTATION) == (
      schema.TEXT_REMOVAL, schema.TAMPERED, schema.SEGMENTATION)
  with pytest.raises(ValueError, match="not one block"):
    BatchLayout.from_task_ids((0, 1, 1, 0), 2)
  x = jnp.arange(12)
  lay = BatchLayout.from_task_ids((2, 0, 1, 0, 0, 1) * 2, 2)
  assert list(losses.select_task(x, lay, 0)) == [1, 3, 4, 7, 9, 10]
  assert list(losses.select_task(x, lay, 2)) == [0, 6]


def test_sharded_loss_moves_no_examples_between_shards():
  """With the batch split over 4 devices, the whole loss (selection, VGG,
  reductions) moves no example between devices: the only collectives are
  all-reduces of scalars (the partial sums of the means)."""
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  lay = BatchLayout.from_counts((2, 1, 1), num_shards=4)
  sh = NamedSharding(mesh, P("data"))
  b = lay.batch_size
  outputs = [jnp.zeros((b, S // s, S // s, 3)) for s in (4, 2, 1)]
  batch = dict(image=jnp.zeros((b, S, S, 3), jnp.uint8),
               target=jnp.zeros((b, S, S, 3), jnp.uint8),
               valid=jnp.ones((b, S, S), bool),
               text_mask=jnp.ones((b, S, S, 1), jnp.uint8))
  outputs, batch = jax.device_put((outputs, batch), sh)
  vgg = VGG16Features(rngs=nnx.Rngs(0))
  fn = jax.jit(lambda o, b: losses.upocr_loss(o, b, vgg, _paper_loss_config(),
                                              lay))
  hlo = fn.lower(outputs, batch).compile().as_text()
  for op in ("all-gather", "all-to-all", "collective-permute"):
    assert op not in hlo, op
  reduce_types = re.findall(r"= (.*) all-reduce\(", hlo)
  assert reduce_types
  for t in reduce_types:
    assert all(d == "" for d in re.findall(r"[a-z]+[0-9]*\[([0-9,]*)\]", t)), t


def test_load_loss_vgg_from_a_checkpoint_file(tmp_path):
  path = tmp_path / "vgg.npz"
  np.savez(path, **{k: v for k, v in fu.official_state_dict().items()
                    if k.startswith("vgg16.")})
  lc = _paper_loss_config()
  lc.vgg_weights = str(path)
  vgg = vgg_weights.load_loss_vgg(lc)
  ref = vgg_weights.load_vgg(str(path))
  x = jnp.full((1, 16, 16, 3), 0.5)
  for a, b in zip(vgg(x), ref(x)):
    np.testing.assert_array_equal(a, b)
