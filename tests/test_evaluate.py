"""Evaluation: CLI end to end, the library functions, sharding, bad inputs."""

import json
import math
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from flax import nnx
from PIL import Image

from input_pipeline import pipeline
from input_pipeline import synthetic
from input_pipeline import write_synthetic
from tests import inference_helpers as helpers
from upocr_jax.evaluation import cli as eval_cli
from upocr_jax.evaluation import evaluate
from upocr_jax.evaluation import metrics
from upocr_jax.inference import image_ops
from upocr_jax.inference import runner


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_workdir")
  helpers.random_weights_dir(root)  # root/weights, as the train loop writes it
  return str(root)


@pytest.fixture(scope="module")
def model(workdir):
  return runner.load_model(workdir)


@pytest.fixture(scope="module")
def cli_results(workdir, tmp_path_factory):
  out = tmp_path_factory.mktemp("eval_out")
  results = eval_cli.main([
      "upocr-eval", "--config=configs/upocr.py:tiny",
      "--config.data.synthetic.num_eval=5", "--checkpoint", workdir,
      "--dataset", "synthetic", "--save_predictions", "--output_dir", str(out)])
  return results, out


def test_cli_writes_metrics_and_predictions(cli_results):
  results, out = cli_results
  report = json.loads((out / "metrics.json").read_text())
  assert report["dataset"] == "synthetic"
  assert set(report["results"]) == set(evaluate.TASKS)
  removal = report["results"]["text removal"]
  assert removal["num_images"] == 5  # the padded 6th..8th examples are masked
  assert removal["mssim_mode"] == "official" and removal["fid"] is None
  assert all(math.isfinite(removal[k]) for k in ("psnr", "mse", "mssim", "age"))
  assert report["results"]["text segmentation"]["num_images"] == 5
  for task in evaluate.TASKS:
    names = sorted(os.listdir(out / "predictions" / task.replace(" ", "_")))
    assert names == [f"{i:07d}.png" for i in range(5)]
  # Removal at the model size; maps at their label's original size.
  assert Image.open(out / "predictions/text_removal/0000000.png").size == (64, 64)
  src = pipeline.create_eval_iterator(helpers.tiny_config(), 2)
  label = next(src)["orig_target"][0]
  seg = Image.open(out / "predictions/text_segmentation/0000000.png")
  assert seg.size == (label.shape[1], label.shape[0])


def test_run_evals_reproduces_cli(model, cli_results):
  results, _ = cli_results
  config = helpers.tiny_config()
  flat = evaluate.run_evals(model, config, step=0)
  assert flat["eval/synthetic/text_removal/psnr"] == pytest.approx(
      results["text removal"]["psnr"], rel=1e-6)
  assert flat["eval/synthetic/text_segmentation/fgIoU"] == pytest.approx(
      results["text segmentation"]["fgIoU"], rel=1e-6, nan_ok=True)
  assert "eval/synthetic/tampered_text_detection/mean_F" in flat
  assert all(isinstance(v, float) for v in flat.values())
  assert not any(k.endswith("num_images") for k in flat)


def test_removal_matches_direct_metrics(model):
  config = helpers.tiny_config()
  res = evaluate.evaluate(model, config, "text_removal", "synthetic",
                          max_examples=3, progress=False)
  batch = next(pipeline.create_eval_iterator(config, 0, max_examples=3))
  out = np.asarray(runner.forward(model, batch["image"],
                                     np.zeros(4, np.int32)))
  per_image = [metrics.text_removal_metrics(
      image_ops.to_uint8_like_official(out[i]), batch["target"][i])
               for i in range(3)]
  assert res["num_images"] == 3
  for k in ("psnr", "mse", "mssim", "pceps"):
    assert res[k] == pytest.approx(np.mean([m[k] for m in per_image]), rel=1e-9)


def test_sharded_eval_matches_single_device(model):
  config = helpers.tiny_config()
  single = evaluate.evaluate(model, config, "tampered text detection",
                             "synthetic", progress=False)
  mesh = Mesh(np.asarray(jax.devices()[:2]), ("data",))
  sharded_model = nnx.clone(model)
  nnx.update(sharded_model, jax.device_put(nnx.state(sharded_model),
                                           NamedSharding(mesh, P())))
  sharded = evaluate.evaluate(sharded_model, config, "tampered text detection",
                              "synthetic", progress=False, mesh=mesh)
  for k in ("mean_IoU", "tampered_F", "num_images"):
    assert sharded[k] == pytest.approx(single[k], rel=1e-5, nan_ok=True)


def test_eval_on_the_configured_mesh_matches_one_device(model):
  config = helpers.tiny_config()
  single = evaluate.evaluate_dataset(model, config, "synthetic",
                                     progress=False)
  config.mesh.shape = (1, 8, 1)
  sharded_model = nnx.clone(model)
  mesh, cfg = eval_cli.eval_mesh(sharded_model, config)
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  # Sharded as training shards it (FSDP), and the batch of 4 padded to 8.
  qkv = sharded_model.encoder.layers[0].blocks[0].attn.qkv.kernel[...]
  assert qkv.sharding.spec[0] == "fsdp"
  assert cfg.data.eval_batch_size == 8
  sharded = evaluate.evaluate_dataset(
      sharded_model, cfg, "synthetic", progress=False, mesh=mesh,
      batch_axes=cfg.sharding.batch_axes)
  for task, res in single.items():
    for k, v in res.items():
      if isinstance(v, float):
        assert sharded[task][k] == pytest.approx(v, rel=1e-5, nan_ok=True), (
            task, k)
      else:
        assert sharded[task][k] == v, (task, k)


def test_bad_inputs(model, workdir, tmp_path):
  config = helpers.tiny_config()
  with pytest.raises(ValueError, match="source is 'synthetic'"):
    evaluate.evaluate(model, config, "text removal", "scut_enstext")
  with pytest.raises(ValueError, match="has no 'text removal' labels"):
    evaluate.evaluate(model, config, "text removal", "textseg")
  with pytest.raises(ValueError, match="unknown dataset"):
    evaluate.evaluate_dataset(model, config, "coco")
  with pytest.raises(ValueError, match="must be a multiple of mesh axes"):
    evaluate.evaluate(model, config, "text removal", "synthetic",
                      mesh=Mesh(np.asarray(jax.devices()[:8]), ("data",)))
  argv = ["upocr-eval", "--config=configs/upocr.py:tiny", "--dataset",
          "synthetic", "--output_dir", str(tmp_path)]
  with pytest.raises(ValueError, match="model fields differ: encoder.embed_dim"):
    eval_cli.main(argv + ["--checkpoint", workdir,
                          "--config.model.encoder.embed_dim=32"])
  with pytest.raises(FileNotFoundError, match="neither a weight directory"):
    eval_cli.main(argv + ["--checkpoint", str(tmp_path)])
  with pytest.raises(ValueError, match="--checkpoint is required"):
    eval_cli.main(argv)


def test_skip_bad_examples_counts_and_names_never_replaces(workdir, tmp_path,
                                                          capsys):
  roots = write_synthetic.write_dataset(
      str(tmp_path / "data"), num_train=1, num_test=5, seed=2,
      params=synthetic.SynthParams(min_size=32, max_size=48, max_words=2))
  root = roots["tampered_text_detection"]
  with open(os.path.join(root, "test_gt", "syn_00001.txt"), "a") as f:
    f.write("1,2,3\n")  # a malformed gt line
  out = tmp_path / "out"
  argv = ["upocr-eval", "--config=configs/upocr.py:tiny", "--checkpoint",
          workdir, "--dataset", "tampered_ic13", "--output_dir", str(out),
          "--config.data.tampered_text_detection.source=folder",
          f"--config.data.tampered_text_detection.root={root}",
          "--config.data.skip_bad_examples=True"]
  res = eval_cli.main(argv)["tampered text detection"]
  assert res["num_images"] == 4 and res["num_skipped"] == 1
  report = json.loads((out / "metrics.json").read_text())
  skipped = report["results"]["tampered text detection"]["skipped"]
  assert len(skipped) == 1 and "syn_00001.txt: line" in skipped[0]
  printed = capsys.readouterr().out
  assert "num_skipped" in printed and "syn_00001.txt: line" in printed


def test_unwritable_output_found_before_loading(tmp_path, monkeypatch):
  monkeypatch.setattr(evaluate.runner, "load_model", lambda *a, **k:
                      pytest.fail("the model was loaded before the check"))
  ckpt = tmp_path / "ckpt"
  ckpt.mkdir()
  (ckpt / "eval").write_text("a file where the default output folder goes")
  argv = ["upocr-eval", "--config=configs/upocr.py:tiny", "--dataset",
          "synthetic", "--checkpoint", str(ckpt)]
  # The default CHECKPOINT/eval/DATASET lies under a regular file: this
  # stands in for a read-only checkpoint folder (chmod does not stop root).
  with pytest.raises(ValueError, match=r"eval/synthetic: cannot write there "
                     r"\(Not a directory\); the default is CHECKPOINT"):
    eval_cli.main(argv)
  with pytest.raises(ValueError, match=r"eval exists and is not a folder; "
                     "choose another --output_dir"):
    eval_cli.main(argv + ["--output_dir", str(ckpt / "eval")])


def test_merge_over_processes(monkeypatch):
  # Two processes that saw the same examples: every count doubles, the
  # averages stay (multi-host cannot run here; the gather is simulated).
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(evaluate.multihost_utils, "process_allgather",
                      lambda x: np.stack([np.asarray(x)] * 2))
  rng = np.random.default_rng(0)
  img = lambda: rng.integers(0, 256, (16, 16, 3), np.uint8)
  removal, seg = metrics.TextRemovalMetrics(), metrics.SegmentationMetrics()
  for _ in range(3):
    removal.update(img(), img())
    seg.update(img(), img())
  before, cm = removal.result(), seg.confusion_matrix.copy()
  evaluate._merge_processes(removal)  # pylint: disable=protected-access
  evaluate._merge_processes(seg)  # pylint: disable=protected-access
  after = removal.result()
  assert after["num_images"] == 6 and seg.num_images == 6
  assert after["psnr"] == pytest.approx(before["psnr"])
  np.testing.assert_array_equal(seg.confusion_matrix, 2 * cm)
