"""Every bad input raises an error that names the file (or is skipped)."""

import json
import os

import numpy as np
import pytest

from input_pipeline import pipeline
from input_pipeline.schema import DataError
from input_pipeline.sources import ScutEnsText, TamperedIC13, TextSeg
from tests.input_pipeline import data_helpers


def _copy(roots, key, tmp_path):
  return data_helpers.copy_dataset(roots[key], str(tmp_path / key))


def _truncate(path):
  data = open(path, "rb").read()
  with open(path, "wb") as f:
    f.write(data[: len(data) // 3])


def test_missing_mask_named_up_front(jpeg_roots, tmp_path):
  root = _copy(jpeg_roots, "text_removal", tmp_path)
  os.remove(os.path.join(root, "train", "mask", "syn_00002.jpg"))
  with pytest.raises(DataError, match=r"train/mask/syn_00002\.jpg: missing"):
    ScutEnsText(root, ["train"])


def test_missing_label_named_up_front(jpeg_roots, tmp_path):
  root = _copy(jpeg_roots, "text_segmentation", tmp_path)
  os.remove(os.path.join(root, "semantic_label", "syn_val_00000_maskfg.png"))
  with pytest.raises(DataError, match=r"syn_val_00000_maskfg\.png: missing"):
    TextSeg(root, ["train", "val"])


def test_truncated_image_named_at_read(jpeg_roots, tmp_path):
  root = _copy(jpeg_roots, "tampered_text_detection", tmp_path)
  path = os.path.join(root, "train_img", "syn_00001.jpg")
  _truncate(path)
  reader = TamperedIC13(root, ["train"])
  reader[0]
  with pytest.raises(DataError, match=r"syn_00001\.jpg: unreadable or truncated"):
    reader[1]


def test_unreadable_image_named_up_front(jpeg_roots, tmp_path):
  root = _copy(jpeg_roots, "text_removal", tmp_path)
  with open(os.path.join(root, "train", "label", "syn_00003.jpg"), "wb") as f:
    f.write(b"not an image")
  with pytest.raises(DataError, match=r"label/syn_00003\.jpg: not a readable"):
    ScutEnsText(root, ["train"])


def test_size_mismatch_named(jpeg_roots, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  root = _copy(jpeg_roots, "text_segmentation", tmp_path)
  label = os.path.join(root, "semantic_label", "syn_train_00001_maskfg.png")
  Image.fromarray(np.zeros((7, 9), np.uint8)).save(label)
  with pytest.raises(DataError, match=r"syn_train_00001_maskfg\.png: label is 9x7"):
    TextSeg(root, ["train"])
  # Without the header check, the read itself still catches it.
  reader = TextSeg(root, ["train"], check_sizes=False)
  with pytest.raises(DataError, match=r"syn_train_00001_maskfg\.png: label is"):
    reader[1]


@pytest.mark.parametrize("line,problem", [
    ("1,2,3,4", "expected 5 comma-separated"),
    ("1,2,x,4,1", "not integers"),
    ("1,2,3,4,7", "label must be 1"),
])
def test_malformed_gt_line_named(jpeg_roots, tmp_path, line, problem):
  root = _copy(jpeg_roots, "tampered_text_detection", tmp_path)
  gt = os.path.join(root, "train_gt", "syn_00004.txt")
  with open(gt, "a", encoding="utf-8") as f:
    f.write(line + "\n")
  with pytest.raises(DataError, match=rf"syn_00004\.txt: line \d+: {problem}"):
    TamperedIC13(root, ["train"])


def test_missing_gt_file_named(jpeg_roots, tmp_path):
  root = _copy(jpeg_roots, "tampered_text_detection", tmp_path)
  os.remove(os.path.join(root, "train_gt", "syn_00000.txt"))
  with pytest.raises(DataError, match=r"train_gt/syn_00000\.txt: missing"):
    TamperedIC13(root, ["train"])


def test_empty_split_named(jpeg_roots, tmp_path):
  root = _copy(jpeg_roots, "text_removal", tmp_path)
  folder = os.path.join(root, "test", "image")
  for n in os.listdir(folder):
    os.remove(os.path.join(folder, n))
  with pytest.raises(DataError, match=r"test/image: no images found"):
    ScutEnsText(root, ["test"])
  seg = _copy(jpeg_roots, "text_segmentation", tmp_path)
  with open(os.path.join(seg, "split.json"), "w", encoding="utf-8") as f:
    json.dump({"train": [], "val": [], "test": []}, f)
  with pytest.raises(DataError, match=r"split\.json: splits .* are empty"):
    TextSeg(seg, ["train", "val"])


def test_not_the_layout_named(jpeg_roots, tmp_path):
  # TextSeg folder given where SCUT-EnsText is expected, and vice versa.
  with pytest.raises(DataError, match=r"TextSeg/train/image: expected folder"):
    ScutEnsText(jpeg_roots["text_segmentation"], ["train"])
  with pytest.raises(DataError, match=r"SCUT-EnsText/split\.json: missing"):
    TextSeg(jpeg_roots["text_removal"], ["train"])
  with pytest.raises(DataError, match=r"split\.json: has no split 'training'"):
    TextSeg(jpeg_roots["text_segmentation"], ["training"])


def test_pipeline_fails_before_training(jpeg_roots, tmp_path):
  roots = dict(jpeg_roots)
  roots["text_removal"] = _copy(jpeg_roots, "text_removal", tmp_path)
  os.remove(os.path.join(roots["text_removal"], "train", "label",
                         "syn_00000.jpg"))
  with pytest.raises(DataError, match=r"label/syn_00000\.jpg: missing"):
    pipeline.create_train_iterator(data_helpers.folder_config(roots))


def test_skip_bad_examples_counts_and_logs(jpeg_roots, tmp_path, caplog):
  roots = dict(jpeg_roots)
  roots["tampered_text_detection"] = _copy(jpeg_roots,
                                           "tampered_text_detection", tmp_path)
  bad = os.path.join(roots["tampered_text_detection"], "train_img",
                     "syn_00003.jpg")
  _truncate(bad)
  cfg = data_helpers.folder_config(roots, tampered_text_detection__batch_size=6)
  with pytest.raises(DataError, match=r"syn_00003\.jpg: unreadable"):
    next(pipeline.create_train_iterator(cfg))
  cfg.skip_bad_examples = True
  with caplog.at_level("WARNING"):
    batch = next(pipeline.create_train_iterator(cfg))
  assert (batch["task_id"] == 1).sum() == 6  # Still exactly 6: replaced.
  assert bad not in batch["name"]
  assert any("syn_00003.jpg" in r.getMessage() and "1 skipped" in r.getMessage()
             for r in caplog.records)


def _eval_examples(cfg, task_id):
  """(names of scored examples, skipped lines) of one eval pass."""
  names, skipped = [], []
  for b in pipeline.create_eval_iterator(cfg, task_id):
    names += [n for n, m in zip(b["name"], b["example_mask"]) if m]
    skipped += [s for s in b["skipped"] if s]
  return names, skipped


def test_eval_skips_every_bad_kind_without_replacing(jpeg_roots, tmp_path):
  roots = {k: _copy(jpeg_roots, k, tmp_path) for k in jpeg_roots}
  rm, tp, sg = (roots["text_removal"], roots["tampered_text_detection"],
                roots["text_segmentation"])
  os.remove(os.path.join(rm, "test", "label", "syn_00001.jpg"))  # missing
  _truncate(os.path.join(rm, "test", "image", "syn_00003.jpg"))  # header
  late = os.path.join(tp, "test_img", "syn_00004.jpg")           # at read
  data = open(late, "rb").read()
  open(late, "wb").write(data[:len(data) * 9 // 10])
  with open(os.path.join(tp, "test_gt", "syn_00002.txt"), "a") as f:
    f.write("1,2,3,4\n")                                         # malformed
  split = json.load(open(os.path.join(sg, "split.json")))
  label = os.path.join(sg, "semantic_label", split["test"][0] + "_maskfg.png")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  Image.fromarray(np.zeros((7, 9), np.uint8)).save(label)        # size
  cfg = data_helpers.folder_config(roots)
  with pytest.raises(DataError, match=r"syn_00001\.jpg: missing"):
    _eval_examples(cfg, 0)
  cfg.skip_bad_examples = True
  cases = [(0, 5, ["label/syn_00001.jpg: missing",
                   "image/syn_00003.jpg: not a readable image"]),
           (1, 5, ["syn_00002.txt: line",
                   "syn_00004.jpg: unreadable or truncated"]),
           (2, len(split["test"]), ["_maskfg.png: label is 9x7"])]
  for task_id, n, problems in cases:
    names, skipped = _eval_examples(cfg, task_id)
    assert len(names) == n - len(problems), task_id   # left out ...
    assert len(set(names)) == len(names), task_id     # ... never replaced
    assert len(skipped) == len(problems), skipped
    for want in problems:
      assert any(want in s for s in skipped), (want, skipped)
