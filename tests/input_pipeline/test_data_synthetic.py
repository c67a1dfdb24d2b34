"""Synthetic generator, set writer, preview and real worker processes."""

import os

import numpy as np
from PIL import Image, ImageFilter

from input_pipeline import fonts
from input_pipeline import pipeline
from input_pipeline import preview
from input_pipeline import schema
from input_pipeline import synthetic
from input_pipeline import synthetic_traces as traces
from input_pipeline import write_synthetic
from tests.input_pipeline import data_helpers


def test_fonts_come_from_packages():
  paths = fonts.default_font_paths()
  assert len(paths) >= 10 and paths[-1] == fonts.PILLOW_DEFAULT
  assert all(os.path.isfile(p) for p in paths[:-1])
  assert fonts.load_font(paths[0], 12).getbbox("Ab")[2] > 0


def test_deterministic_per_index_and_split():
  for t in range(3):
    a = synthetic.SyntheticSource(t, 10, seed=5, params=data_helpers.SMALL)
    b = synthetic.SyntheticSource(t, 10, seed=5, params=data_helpers.SMALL)
    test = synthetic.SyntheticSource(t, 10, seed=5, split="test",
                                     params=data_helpers.SMALL)
    for i in (7, 2):
      np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
      np.testing.assert_array_equal(a[i]["target"], b[i]["target"])
    assert not np.array_equal(a[2]["image"], a[3]["image"])
    assert not np.array_equal(a[2]["image"], test[2]["image"])


def test_task_contents():
  n = 12
  params = data_helpers.SMALL
  rem = synthetic.SyntheticSource(schema.TEXT_REMOVAL, n, params=params)
  assert any((rem[i]["text_mask"] == 0).any() for i in range(n))
  for i in range(n):  # Outside the text regions the composite is the target.
    ex = rem[i]
    keep = ex["text_mask"].astype(bool)
    np.testing.assert_array_equal(ex["image"][keep], ex["target"][keep])
  seg = synthetic.SyntheticSource(schema.SEGMENTATION, n, params=params)
  values = set()
  for i in range(n):
    values |= set(np.unique(seg.raw(i)["label"]).tolist())
  assert {0, 100, 255} <= values and values <= {0, 100, 200, 255}
  tam = synthetic.SyntheticSource(schema.TAMPERED, n, params=params)
  labels = []
  for i in range(n):
    raw = tam.raw(i)
    h, w = raw["image"].shape[:2]
    boxes = raw["boxes"]
    assert ((boxes[:, 0] >= 0) & (boxes[:, 2] < w) & (boxes[:, 1] >= 0) &
            (boxes[:, 3] < h)).all()
    labels += boxes[:, 4].tolist()
  assert 1 in labels and 2 in labels
  infinite = synthetic.SyntheticSource(0, None)
  assert len(infinite) > 10 ** 9


def test_writer_cli_layouts(tmp_path):
  write_synthetic.main(["write_synthetic", "--out", str(tmp_path),
                        "--num_train", "2", "--num_test", "1",
                        "--config.data.synthetic.min_size=32",
                        "--config.data.synthetic.max_size=40"])
  for rel in ("SCUT-EnsText/train/image/syn_00001.jpg",
              "SCUT-EnsText/test/mask/syn_00000.jpg",
              "TextSeg/semantic_label/syn_val_00000_maskfg.png",
              "TextSeg/split.json", "Tampered-IC13/train_gt/syn_00001.txt",
              "Tampered-IC13/test_img/syn_00000.jpg"):
    assert os.path.isfile(tmp_path / rel), rel


def test_preview_cli(tmp_path):
  out = tmp_path / "grid.png"
  preview.main(["preview", "--config", "configs/upocr.py:tiny", "--out",
                str(out), "--per_task", "2", "--cell", "32",
                "--config.data.image_size=32"])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  assert Image.open(out).size[1] == 3 * (32 + 8)


def test_real_worker_processes_and_restore(jpeg_roots):
  cfg = data_helpers.folder_config(jpeg_roots, worker_count=2,
                                   worker_buffer_size=2)
  it = pipeline.create_train_iterator(cfg)
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  serial = pipeline.create_train_iterator(
      data_helpers.folder_config(jpeg_roots))
  for b in first:  # Workers produce exactly the in-process batches.
    s = next(serial)
    np.testing.assert_array_equal(b["image"], s["image"])
    assert b["name"] == s["name"]
  resumed = pipeline.create_train_iterator(cfg)
  resumed.set_state(state)
  for b in expected:
    r = next(resumed)
    np.testing.assert_array_equal(b["image"], r["image"])
    np.testing.assert_array_equal(b["target"], r["target"])


def _grain(image: np.ndarray, where: np.ndarray) -> float:
  """Median high-frequency residual: the grain of `image` over `where`."""
  blurred = np.asarray(Image.fromarray(image).filter(
      ImageFilter.GaussianBlur(1.0)), np.float32)
  return float(np.median(np.abs(image.astype(np.float32) - blurred).mean(-1)[where]))


def test_tampering_leaves_a_history_different_from_the_photo():
  rng = np.random.default_rng(0)
  flat = np.full((40, 40, 3), 120, np.uint8)
  everywhere = np.ones((40, 40), bool)
  photo = traces.camera_history(rng, flat)
  assert _grain(photo, everywhere) > 2.0
  # A re-rendered word is drawn on a clean (inpainted) patch: 'clean' keeps it so.
  clean = traces.edited_history(rng, flat.copy(), ("clean",))
  assert _grain(clean, everywhere) < 0.5 * _grain(photo, everywhere)
  for kind in traces.EDIT_KINDS[1:]:  # Pasted over the photo's own pixels.
    edited = traces.edited_history(rng, photo.copy(), (kind,))
    ratio = _grain(edited, everywhere) / _grain(photo, everywhere)
    assert not 1 / 1.5 < ratio < 1.5, (kind, ratio)
  assert (_grain(traces.inpaint_residue(rng, photo), everywhere)
          < 0.5 * _grain(photo, everywhere))


def test_tampered_words_are_smoother_or_grainier_than_real_ones():
  # Text edges make every word box grainier than the photo's background; a
  # tampered box pasted clean, blurred or resampled is smoother instead.
  src = synthetic.SyntheticSource(schema.TAMPERED, 40, split="test")
  ratio = {1: [], 2: []}
  for i in range(len(src)):
    raw = src.raw(i)
    image, boxes = raw["image"], raw["boxes"]
    outside = np.ones(image.shape[:2], bool)
    for x1, y1, x2, y2, _ in boxes:
      outside[y1:y2 + 1, x1:x2 + 1] = False
    background = _grain(image, outside)
    for x1, y1, x2, y2, label in boxes:
      box = np.zeros(image.shape[:2], bool)
      box[y1:y2 + 1, x1:x2 + 1] = True
      ratio[label].append(_grain(image, box) / background)
  smoother = {k: np.mean(np.asarray(v) < 1.0) for k, v in ratio.items()}
  assert smoother[2] > 0.25 and smoother[1] < 0.05, smoother
