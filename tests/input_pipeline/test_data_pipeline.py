"""Batch layout, sharding, determinism, checkpointing, eval and transforms."""

import itertools

import grain
import numpy as np
import pytest

from input_pipeline import layout
from input_pipeline import pipeline
from input_pipeline import schema
from input_pipeline import synthetic
from input_pipeline import transforms
from tests.input_pipeline import data_helpers


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  for k in ("image", "target", "valid", "text_mask", "task_id"):
    np.testing.assert_array_equal(a[k], b[k])
  assert a["name"] == b["name"]


def test_layout_per_data_shard_and_schema():
  cfg = data_helpers.tiny_data_config(text_removal__batch_size=4,
                                      tampered_text_detection__batch_size=2,
                                      text_segmentation__batch_size=6)
  batches = _take(pipeline.create_train_iterator(cfg, num_data_shards=2), 3)
  s = cfg.image_size
  for b in batches:
    assert b["image"].shape == (12, s, s, 3) and b["image"].dtype == np.uint8
    assert b["target"].shape == (12, s, s, 3) and b["target"].dtype == np.uint8
    assert b["valid"].shape == (12, s, s) and b["valid"].dtype == bool
    assert b["text_mask"].shape == (12, s, s, 1)
    assert b["task_id"].dtype == np.int32
    # [shard0: t0 x2, t1 x1, t2 x3, shard1: same].
    np.testing.assert_array_equal(b["task_id"], [0, 0, 1, 2, 2, 2] * 2)
    assert b["text_mask"][b["task_id"] != 0].all()
    assert b["valid"][b["task_id"] == 0].all()


def test_float_output_and_uneven_ratio():
  cfg = data_helpers.tiny_data_config(image_dtype="float32",
                                      tampered_text_detection__batch_size=0)
  b = next(pipeline.create_train_iterator(cfg))
  assert b["image"].dtype == np.float32 and 0 <= b["image"].min()
  assert b["image"].max() <= 1
  np.testing.assert_array_equal(
      b["task_id"], [0] * cfg.text_removal.batch_size
      + [2] * cfg.text_segmentation.batch_size)


def test_bad_batch_config():
  cfg = data_helpers.tiny_data_config(text_removal__batch_size=3)
  with pytest.raises(ValueError, match="text_removal.batch_size=3"):
    pipeline.create_train_iterator(cfg, num_data_shards=2)
  with pytest.raises(ValueError, match="must divide one another"):
    layout.local_shards(0, 3, 2)


def test_process_shards_are_disjoint_and_cover_an_epoch():
  # 12 examples per task, 2 processes x 3 per task per step: 2 steps = 1 epoch.
  cfg = data_helpers.tiny_data_config(text_removal__batch_size=6,
                                      tampered_text_detection__batch_size=6,
                                      text_segmentation__batch_size=6)
  names = []
  for p in range(2):
    it = pipeline.create_train_iterator(cfg, p, 2, num_data_shards=2)
    names.append(list(itertools.chain(*(b["name"] for b in _take(it, 2)))))
  assert not set(names[0]) & set(names[1])
  assert len(set(names[0]) | set(names[1])) == 36
  # Processes sharing one data shard (4 processes, 2 shards) get equal batches.
  a = next(pipeline.create_train_iterator(cfg, 0, 4, num_data_shards=2))
  b = next(pipeline.create_train_iterator(cfg, 1, 4, num_data_shards=2))
  _same(a, b)


def test_epochs_reshuffle_and_each_epoch_is_a_permutation():
  cfg = data_helpers.tiny_data_config(text_removal__batch_size=4,
                                      tampered_text_detection__batch_size=0,
                                      text_segmentation__batch_size=0)
  names = [n for b in _take(pipeline.create_train_iterator(cfg), 6)
           for n in b["name"]]
  assert sorted(names[:12]) == sorted(names[12:])
  assert names[:12] != names[12:]
  assert len(set(names[:12])) == 12


def test_deterministic_replay_and_seed_change():
  cfg = data_helpers.tiny_data_config()
  a = _take(pipeline.create_train_iterator(cfg), 3)
  b = _take(pipeline.create_train_iterator(cfg), 3)
  for x, y in zip(a, b):
    _same(x, y)
  cfg.seed = 1
  c = next(pipeline.create_train_iterator(cfg))
  assert a[0]["name"] == c["name"]  # Same shuffle, other augmentation.
  assert not np.array_equal(a[0]["image"], c["image"])


def test_synthetic_cache_gives_the_same_batches_over_epochs():
  # 12 examples per task and 6 + 3 + 3 per step: 4 steps read the removal
  # split twice, so the second epoch is served from the cache (and would
  # fail on a transform writing into a cached, read-only array).
  on = data_helpers.tiny_data_config()
  off = data_helpers.tiny_data_config(synthetic__cache=False)
  assert on.synthetic.cache
  for x, y in zip(_take(pipeline.create_train_iterator(on), 4),
                  _take(pipeline.create_train_iterator(off), 4)):
    _same(x, y)
  source = synthetic.SyntheticSource(0, 3, cache=True)
  first = source[1]
  assert source[1] is not first and source[1]["image"] is first["image"]
  assert not first["image"].flags.writeable
  with pytest.raises(ValueError, match="finite num_examples"):
    synthetic.SyntheticSource(0, None, cache=True)


def test_exact_continuation_get_set_state():
  cfg = data_helpers.tiny_data_config()
  it = pipeline.create_train_iterator(cfg)
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  fresh = pipeline.create_train_iterator(cfg)
  fresh.set_state(state)
  for x, y in zip(expected, _take(fresh, 3)):
    _same(x, y)


def test_exact_continuation_with_orbax(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  cfg = data_helpers.tiny_data_config()
  it = pipeline.create_train_iterator(cfg)
  _take(it, 3)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.save(3, args=ocp.args.Composite(
        ds=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  expected = _take(it, 2)
  fresh = pipeline.create_train_iterator(cfg)
  with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
    mngr.restore(3, args=ocp.args.Composite(
        ds=grain.checkpoint.CheckpointRestore(fresh)))
  for x, y in zip(expected, _take(fresh, 2)):
    _same(x, y)


def test_eval_fixed_order_padding_and_original_labels():
  cfg = data_helpers.tiny_data_config(eval_batch_size=4)
  seen = []
  for p in range(2):
    ds, steps = pipeline.create_eval_dataset(cfg, schema.SEGMENTATION, p, 2)
    batches = list(ds)
    assert steps == len(batches) == 2  # 5 examples -> 2 global batches of 4.
    for b in batches:
      assert b["image"].shape == (2, 32, 32, 3)
      assert b["example_mask"].dtype == bool
      for t, v in zip(b["orig_target"], b["orig_valid"]):
        assert t.shape[:2] == v.shape
      seen.append([n for n, m in zip(b["name"], b["example_mask"]) if m])
  flat = [n for s in (seen[0], seen[2], seen[1], seen[3]) for n in s]
  assert flat == sorted(flat) and len(flat) == 5  # File order, no repeats.
  assert sum(len(s) for s in seen) == 5
  again, _ = pipeline.create_eval_dataset(cfg, schema.SEGMENTATION, 0, 2)
  assert [b["name"] for b in again] == [b["name"] for b in
                                        pipeline.create_eval_dataset(
                                            cfg, schema.SEGMENTATION, 0, 2)[0]]


def test_eval_keeps_labels_unaugmented(jpeg_roots):
  from input_pipeline.sources import TextSeg  # pylint: disable=g-import-not-at-top
  cfg = data_helpers.folder_config(jpeg_roots, eval_batch_size=5)
  b = next(pipeline.create_eval_iterator(cfg, schema.SEGMENTATION))
  reader = TextSeg(jpeg_roots["text_segmentation"], ["test"])
  for i in range(5):
    np.testing.assert_array_equal(b["orig_target"][i], reader[i]["target"])
  assert b["example_mask"].all()


class _Aug:
  crop_prob, crop_min_ratio, crop_max_ratio = 0.0, 1.0, 1.0
  hflip_prob, jitter_prob = 0.0, 0.0
  brightness = contrast = saturation = hue = 0.0
  rotate_prob, rotate_max_angle = 1.0, 30.0


def _example(task_id, h=20, w=30):
  img = np.full((h, w, 3), 200, np.uint8)
  tgt = np.full((h, w, 3), 255, np.uint8)
  mask = np.zeros((h, w), np.uint8)
  return schema.make_example(task_id, img, tgt, "x", text_mask=mask)


def test_rotation_fills():
  rng = np.random.default_rng(0)
  seg = transforms.train_transform(_example(schema.SEGMENTATION), rng, _Aug, 40)
  corner = (0, 0)
  assert (seg["target"][corner] == 128).all() and not seg["valid"][corner]
  assert (seg["image"][corner] == 0).all()
  rem = transforms.train_transform(_example(schema.TEXT_REMOVAL),
                                   np.random.default_rng(0), _Aug, 40)
  assert rem["text_mask"][corner] == 1  # Padding counts as non-text.
  assert (rem["target"][corner] == 0).all() and rem["valid"].all()
  assert rem["text_mask"][20, 20] == 0


def test_crop_flip_jitter_shapes_and_labels_stay_discrete():
  class Aug(_Aug):
    crop_prob, crop_min_ratio, crop_max_ratio = 1.0, 0.5, 0.7
    hflip_prob, jitter_prob = 1.0, 1.0
    brightness = contrast = saturation = hue = 0.5
    rotate_prob = 0.0
  ex = _example(schema.TAMPERED, 50, 60)
  ex["target"][:, :30] = schema.REAL_RGB
  out = transforms.train_transform(ex, np.random.default_rng(1), Aug, 24)
  assert out["image"].shape == (24, 24, 3)
  colours = {tuple(c) for c in out["target"].reshape(-1, 3)}
  assert colours <= {(255, 255, 255), schema.REAL_RGB}
  # Hue rotation by half a turn maps red to cyan-ish in 8-bit HSV.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  red = Image.new("RGB", (2, 2), (255, 0, 0))
  r, g, b = np.asarray(transforms.adjust_hue(red, 0.5))[0, 0]
  assert r < 10 and g > 240 and b > 240


def test_global_batch_is_independent_of_the_process_count():
  # 4 data shards read by 1, 2 or 4 processes: the concatenated process
  # batches (in process order) are the same global batch, pixel for pixel.
  cfg = data_helpers.tiny_data_config(text_removal__batch_size=4,
                                      tampered_text_detection__batch_size=4,
                                      text_segmentation__batch_size=4)
  whole = _take(pipeline.create_train_iterator(cfg, 0, 1, 4), 2)
  for procs in (2, 4):
    parts = [_take(pipeline.create_train_iterator(cfg, p, procs, 4), 2)
             for p in range(procs)]
    for step in range(2):
      for key in ("image", "target", "valid", "text_mask", "task_id"):
        glued = np.concatenate([parts[p][step][key] for p in range(procs)])
        np.testing.assert_array_equal(glued, whole[step][key])
