"""benchmarks/vs_pytorch.py: the pure helpers (always), the official side's
stand-ins (when torch is installed) and a tiny end-to-end run (when torch is
installed and UPOCR_OFFICIAL names an official UPOCR checkout)."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import vs_pytorch_common as common
from configs import upocr as upocr_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "vs_pytorch.py")


def _parse(argv):
  """official argv -> {flag: value or list of values or True}."""
  out, key = {}, None
  for a in argv:
    if a.startswith("--"):
      key = a[2:]
      out[key] = True
    elif out[key] is True:
      out[key] = a
    else:
      out[key] = (out[key] if isinstance(out[key], list) else [out[key]]) + [a]
  return out


def test_paper_config_maps_to_the_official_defaults():
  config = common.prepare_config(upocr_config.get_config("paper"), 512, 1,
                                 remat=True)
  got = _parse(common.official_argv(config, 512))
  # The defaults of the official utils/parser.py: the paper model.
  assert got["swin_enc_embed_dim"] == "96"
  assert got["swin_enc_depths"] == ["2", "2", "18", "2"]
  assert got["swin_enc_num_heads"] == ["3", "6", "12", "24"]
  assert got["swin_enc_window_size"] == got["swin_enc_pretrained_ws"] == "16"
  assert got["swin_dec_depths"] == ["2", "18", "2", "2", "2"]
  assert got["swin_dec_num_heads"] == ["24", "12", "6", "3", "2"]
  assert got["swin_dec_window_size"] == got["swin_dec_pretrained_ws"] == "8"
  assert float(got["swin_enc_drop_path_rate"]) == 0.3
  assert float(got["swin_dec_drop_path_rate"]) == 0.3
  assert float(got["lr"]) == 5e-4 and float(got["lr_encoder_ratio"]) == 0.1
  assert float(got["weight_decay"]) == 1e-4
  assert float(got["clip_max_norm"]) == 0.1
  assert got["device"] == "cpu" and got["pix2pix_size"] == "512"
  assert got["intermediate_output"] == "true"
  assert got["swin_use_checkpoint"] is True


def test_tiny_config_maps_its_own_hyper_parameters():
  config = common.prepare_config(upocr_config.get_config("tiny"), 64, 2,
                                 remat=False)
  got = _parse(common.official_argv(config, 64))
  assert got["swin_enc_embed_dim"] == "24"
  assert got["swin_enc_depths"] == ["1"] * 4
  assert got["swin_dec_depths"] == ["1"] * 5
  assert got["swin_enc_num_heads"] == ["1", "2", "2", "4"]
  assert got["swin_dec_num_heads"] == ["4", "2", "2", "1", "1"]
  assert got["swin_enc_window_size"] == got["swin_dec_window_size"] == "4"
  assert float(got["lr_encoder_ratio"]) == 1.0
  assert "swin_use_checkpoint" not in got


def test_prepare_config_forces_the_official_work_and_rejects_the_rest():
  base = upocr_config.get_config("tiny")
  c = common.prepare_config(base, 96, 2, remat=True)
  assert c.data.image_size == 96 and c.model.remat
  assert [c.data[k].batch_size for k in
          ("text_removal", "tampered_text_detection", "text_segmentation")
          ] == [2, 2, 2]
  # The official step always has the VGG16 terms; tiny turns them off.
  assert c.loss.perceptual and c.loss.style and c.loss.vgg_weights
  assert not base.loss.perceptual and base.data.image_size == 64  # a copy
  for field, value in (("dtype", "bfloat16"), ("mask_padding", True),
                       ("patch_size", 2)):
    bad = upocr_config.get_config("tiny")
    bad.model[field] = value
    with pytest.raises(ValueError, match=f"config.model.{field}"):
      common.prepare_config(bad, 64, 1, remat=False)


def test_official_batch_is_the_same_batch_in_the_official_layout():
  ids = common.task_ids(2)
  assert ids == [0, 0, 1, 1, 2, 2]
  batch = common.random_batch(32, ids, seed=3)
  again = common.random_batch(32, ids, seed=3)
  assert all(np.array_equal(batch[k], again[k]) for k in batch)
  images, labels, tasks = common.official_batch(batch)
  assert tasks == [common.OFFICIAL_TASKS[i] for i in ids]
  assert images.shape == (6, 3, 32, 32) and images.dtype == np.float32
  np.testing.assert_allclose(images[1, :, 4, 5], batch["image"][1, 4, 5] / 255)
  tr = labels["text removal"]
  assert tr["label"].shape == (2, 3, 32, 32)
  assert tr["gt_mask"].shape == (2, 1, 32, 32)
  np.testing.assert_array_equal(tr["gt_mask"][:, 0],
                                batch["text_mask"][:2, ..., 0])
  for name, rows in (("tampered text detection", slice(2, 4)),
                     ("text segmentation", slice(4, 6))):
    label = labels[name]["label"]
    invalid = ~batch["valid"][rows]
    assert invalid.any()
    assert np.all(label.transpose(0, 2, 3, 1)[invalid] == np.float32(128 / 255))
    np.testing.assert_allclose(label.transpose(0, 2, 3, 1)[~invalid],
                               batch["target"][rows][~invalid] / 255)
  # A one-task batch (inference) has that task's labels only.
  assert list(common.official_batch(common.random_batch(32, [0]))[1]) == [
      "text removal"]


def test_summary_and_json_line():
  s = common.summarize([3.0, 1.0, 2.0])
  assert (s["median_s"], s["min_s"], s["max_s"]) == (2.0, 1.0, 3.0)
  with pytest.raises(ValueError, match="no timed calls"):
    common.summarize([])
  line = common.combine(
      "train", {"median_s": 6.0, "max_rss_bytes": 400, "params": 7},
      {"median_s": 2.0, "max_rss_bytes": 600, "params": 7}, {"image_size": 64})
  assert line["speedup"] == 3.0 and line["rss_ratio"] == 1.5
  assert line["params_match"]
  assert line["mode"] == "train" and line["image_size"] == 64
  assert json.loads(json.dumps(line)) == line
  with pytest.raises(ValueError, match="official side's report lacks"):
    common.combine("infer", {"median_s": 1.0}, {"median_s": 1.0,
                                                "max_rss_bytes": 1}, {})


def test_settings_are_checked():
  ok = dict(mode="train", size=64, batch_per_task=1, steps=1, warmup=0,
            threads=1, official="")
  common.check_settings(common.Settings(**ok))
  for field, value, msg in (("size", 48, "--size 48"), ("steps", 0, "--steps"),
                            ("mode", "eval", "--mode"),
                            ("warmup", -1, "--warmup")):
    with pytest.raises(ValueError, match=msg):
      common.check_settings(common.Settings(**{**ok, field: value}))


def _script(*args, timeout=120):
  return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, check=False)


def test_help_and_one_line_errors():
  out = _script("--help")  # absl's --help exits with status 1
  for flag in ("--official:", "--mode:", "--side:", "--size:", "--steps:",
               "--warmup:", "--threads:", "--[no]remat:", "--config:",
               "--batch_per_task:", "--official_remat:"):
    assert flag in out.stdout
  out = _script("--config=configs/upocr.py:tiny")
  assert out.returncode != 0
  assert out.stderr.strip().splitlines()[-1].startswith(
      "vs_pytorch: error: --official PATH")
  out = _script("--config=configs/upocr.py:tiny", "--official", ROOT)
  assert "not an official UPOCR checkout" in out.stderr.strip().splitlines()[-1]


def test_official_remat_sets_the_official_side_apart():
  for remat, official_remat, want in (
      (True, "same", (True, True)), (False, "same", (False, False)),
      (True, "off", (True, False)), (False, "on", (False, True))):
    got = (common.side_remat("ours", "train", remat, official_remat),
           common.side_remat("official", "train", remat, official_remat))
    assert got == want, (remat, official_remat)
    # Inference has no backward pass: never checkpointed.
    for side in common.SIDES:
      assert not common.side_remat(side, "infer", remat, official_remat)
  with pytest.raises(ValueError, match="--official_remat"):
    common.side_remat("ours", "train", True, "yes")


def test_official_stand_ins():
  torch = pytest.importorskip("torch", reason="torch is not installed")
  # Imported here: the module imports torch, which is optional.
  official = importlib.import_module("benchmarks.vs_pytorch_official")
  vgg = official._VGG16()  # pylint: disable=protected-access
  # torchvision's vgg16().features: 13 conv+ReLU pairs and 5 pools; the
  # official loss's enc_3 ends at features[16], the third pool.
  assert len(vgg.features) == 31
  assert isinstance(vgg.features[16], torch.nn.MaxPool2d)
  assert sum(isinstance(m, torch.nn.Conv2d) for m in vgg.features) == 13
  assert official.to_2tuple(4) == (4, 4)
  assert official.to_2tuple([3, 5]) == (3, 5)
  drop = official.DropPath(0.5)
  x = torch.ones(64, 3)
  drop.eval()
  assert torch.equal(drop(x), x)
  drop.train()
  y = drop(x)
  # Whole samples dropped or scaled by 1 / keep.
  assert set(torch.unique(y).tolist()) <= {0.0, 2.0}
  assert torch.all(y == y[:, :1])
  loader = official._TimedLoader("b", 3, False)  # pylint: disable=protected-access
  assert len(loader) == 3 and list(loader) == ["b"] * 3
  assert len(loader.times) == 3 and min(loader.times) >= 0


_FAKE_SIDE = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks import vs_pytorch_turns as turns
spans = []
for _ in range(int(sys.argv[2])):
  turns.wait_turn(True)
  t = time.time()
  time.sleep(0.05)
  spans.append((t, time.time()))
turns.finished(True)
print(json.dumps(spans))
"""


def test_interleaved_sides_take_turns_one_call_at_a_time():
  from benchmarks import vs_pytorch_turns as turns  # noqa: PLC0415
  procs = {}
  for name in ("a", "b"):
    procs[name] = subprocess.Popen(
        [sys.executable, "-c", _FAKE_SIDE, ROOT, "3"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    assert turns.expect(procs[name], name, (turns.READY,)) == turns.READY
  turns.drive(procs, 3)
  spans = {n: json.loads(turns.rest(p).splitlines()[-1])
           for n, p in procs.items()}
  order = sorted((start, end, n) for n, ss in spans.items()
                 for start, end in ss)
  assert [n for _, _, n in order] == ["a", "b"] * 3  # alternating
  for (_, end, _), (start, _, _) in zip(order, order[1:]):
    assert start >= end  # never two calls at once
  assert all(p.returncode == 0 for p in procs.values())


def test_a_side_that_dies_before_its_turn_is_an_error():
  from benchmarks import vs_pytorch_turns as turns  # noqa: PLC0415
  proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
  with pytest.raises(RuntimeError, match="the ours side's process ended "
                     r"\(exit 3\)"):
    turns.expect(proc, "ours", (turns.READY,))


def test_paired_speedup():
  assert common.paired_speedup([2.0, 9.0, 3.0], [1.0, 3.0, 3.0]) == 2.0
  with pytest.raises(ValueError, match="same count"):
    common.paired_speedup([1.0], [1.0, 2.0])


def _tiny_side_by_side(*flags):
  """Runs the script on the tiny model at 64x64, one thread, against the
  official checkout UPOCR_OFFICIAL names (skips without it or torch)."""
  pytest.importorskip("torch", reason="torch is not installed")
  official = os.environ.get("UPOCR_OFFICIAL")
  if not official:
    pytest.skip("set UPOCR_OFFICIAL to a checkout of the official UPOCR "
                "repository to run the side-by-side smoke test")
  out = _script("--official", official, "--config=configs/upocr.py:tiny",
                "--size", "64", "--warmup", "0", "--threads", "1", *flags,
                timeout=1800)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def test_tiny_end_to_end():
  out = _tiny_side_by_side("--steps", "1")
  lines = [json.loads(s) for s in out.stdout.splitlines() if s.startswith("{")]
  assert [line["mode"] for line in lines] == ["train", "infer"]
  for line in lines:
    assert line["image_size"] == 64 and line["threads"] == 1
    # The same model on both sides.
    assert line["official"]["params"] == line["ours"]["params"] > 0
    assert line["params_match"]
    assert line["speedup"] > 0 and line["rss_ratio"] > 0
    assert line["official"]["threads"] == 1
  train, infer = lines
  assert train["batch"] == train["official"]["batch"] == train["ours"][
      "batch"] == 3
  assert train["remat"] and not infer["remat"]
  assert train["official_remat"] and not infer["official_remat"]
  assert train["official"]["checkpoint"] and train["ours"]["remat"]
  assert train["ours"]["compile_s"] > 0 and infer["ours"]["first_call_s"] > 0
  assert np.isfinite(train["official"]["loss_mean"])
  assert np.isfinite(train["ours"]["loss_mean"])
  assert not train["interleaved"] and "speedup_paired" not in train


def test_tiny_end_to_end_interleaved():
  out = _tiny_side_by_side("--steps", "2", "--mode=train", "--interleave")
  line = json.loads(out.stdout.strip().splitlines()[-1])
  assert line["interleaved"] and line["speedup_paired"] > 0
  assert len(line["official"]["all_s"]) == len(line["ours"]["all_s"]) == 2
  assert "alternating rounds" in out.stderr
