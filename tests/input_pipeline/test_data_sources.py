"""Folder readers, label conversions and the TFDS round trip."""

import json
import os

import numpy as np
from PIL import Image

from input_pipeline import schema
from input_pipeline import synthetic
from input_pipeline.sources import ScutEnsText, TamperedIC13, TextSeg
from tests.input_pipeline import data_helpers


def _check_schema(ex, task_id):
  h, w = ex["image"].shape[:2]
  assert ex["image"].dtype == np.uint8 and ex["image"].shape == (h, w, 3)
  assert ex["target"].dtype == np.uint8 and ex["target"].shape == (h, w, 3)
  assert ex["valid"].dtype == bool and ex["valid"].shape == (h, w)
  assert ex["text_mask"].dtype == np.uint8 and ex["text_mask"].shape == (h, w)
  assert set(np.unique(ex["text_mask"])) <= {0, 1}
  assert int(ex["task_id"]) == task_id
  assert isinstance(ex["name"], str)


def test_readers_match_generator_pixel_by_pixel(lossless_roots):
  cases = [(ScutEnsText, "text_removal", ["train"], "train", 0),
           (TamperedIC13, "tampered_text_detection", ["train"], "train", 1)]
  for cls, key, splits, split, task_id in cases:
    reader = cls(lossless_roots[key], splits)
    src = synthetic.SyntheticSource(task_id, 4, 3, split, data_helpers.SMALL)
    assert len(reader) == 4
    for i in range(4):
      got, want = reader[i], src[i]
      _check_schema(got, task_id)
      for k in ("image", "target", "valid", "text_mask"):
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{key} {i} {k}")
  # TextSeg: images are JPEG by the official layout, labels PNG (exact).
  reader = TextSeg(lossless_roots["text_segmentation"], ["train", "val"])
  assert len(reader) == 6
  src = synthetic.SyntheticSource(2, 4, 3, "train", data_helpers.SMALL)
  for i in range(4):
    _check_schema(reader[i], 2)
    np.testing.assert_array_equal(reader[i]["target"], src[i]["target"])


def test_textseg_label_conversion(tmp_path):
  root = tmp_path / "TextSeg"
  (root / "image").mkdir(parents=True)
  (root / "semantic_label").mkdir()
  label = np.array([[0, 100, 200], [255, 50, 100]], np.uint8)
  Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(root / "image" / "a.jpg")
  Image.fromarray(label).save(root / "semantic_label" / "a_maskfg.png")
  (root / "split.json").write_text(json.dumps({"test": ["a"]}))
  ex = TextSeg(str(root), ["test"])[0]
  want = np.array([[0, 255, 0], [128, 50, 255]], np.uint8)
  np.testing.assert_array_equal(ex["target"], np.repeat(want[..., None], 3, 2))
  np.testing.assert_array_equal(ex["valid"], want != 128)
  assert ex["text_mask"].all()


def test_tampered_boxes_drawn_in_order(tmp_path):
  root = tmp_path / "T"
  (root / "test_img").mkdir(parents=True)
  (root / "test_gt").mkdir()
  Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "test_img" / "x.jpg")
  # Second box overlaps the first and wins; third has swapped corners.
  (root / "test_gt" / "x.txt").write_text("1,1,4,3,1\n3,2,5,4,2\n\n7,5,6,4,1\n")
  ex = TamperedIC13(str(root), ["test"])[0]
  want = np.zeros((6, 8), int)  # 0 red, 1 green, 2 blue
  want[1:4, 1:5] = 1
  want[2:5, 3:6] = 2
  want[4:6, 6:8] = 1
  colours = np.array([schema.BACKGROUND_RGB, schema.REAL_RGB,
                      schema.TAMPERED_RGB], np.uint8)
  np.testing.assert_array_equal(ex["target"], colours[want])
  assert ex["valid"].all()


def test_removal_mask_is_one_on_white(tmp_path):
  root = tmp_path / "S" / "train"
  for sub in ("image", "label", "mask"):
    (root / sub).mkdir(parents=True)
  img = np.full((4, 5, 3), 9, np.uint8)
  mask = np.full((4, 5), 255, np.uint8)
  mask[1:3, 2:4] = 0
  for sub, arr in (("image", img), ("label", img), ("mask", mask)):
    Image.fromarray(arr).save(root / sub / "n.png")
  ex = ScutEnsText(str(tmp_path / "S"), ["train"])[0]
  np.testing.assert_array_equal(ex["text_mask"], (mask > 0).astype(np.uint8))
  assert ex["valid"].all()


def test_tfds_round_trip(jpeg_roots, tmp_path):
  from input_pipeline.sources import tfds_builders, tfds_source  # pylint: disable=g-import-not-at-top
  cases = [("scut_enstext", "text_removal", ScutEnsText, "test", 0),
           ("tampered_ic13", "tampered_text_detection", TamperedIC13, "test", 1),
           ("textseg", "text_segmentation", TextSeg, "val", 2)]
  for name, key, cls, split, task_id in cases:
    tfds_builders.build(name, jpeg_roots[key], str(tmp_path))
    got = tfds_source.TfdsSource(name, str(tmp_path), [split], task_id)
    want = {e["name"]: e for e in cls(jpeg_roots[key], [split])}
    assert len(got) == len(want) > 0
    for i in range(len(got)):
      ex = got[i]
      _check_schema(ex, task_id)
      for k in ("image", "target", "valid", "text_mask"):
        np.testing.assert_array_equal(ex[k], want[ex["name"]][k])
  assert os.listdir(tmp_path)
