"""Import of official checkpoints: formats, wrappers, errors, CLI, round trip."""

import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from tests.fixture_utils import fixture_model_config, official_state_dict
from upocr_jax.models.layers import FrozenParam
from upocr_jax.weights import convert
from upocr_jax.weights import official
from upocr_jax.weights import state_dict
from upocr_jax.weights import vgg_weights
from upocr_jax.weights import weight_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def sd():
  return official_state_dict()


def flat(module, var_type=nnx.Param):
  return {p: np.asarray(v[...]) for p, v in
          nnx.to_flat_state(nnx.state(module, var_type))}


def assert_same(a, b):
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    np.testing.assert_array_equal(fa[k], fb[k], err_msg=str(k))


@pytest.fixture(scope="module")
def reference(sd):
  return official.load_official(sd, fixture_model_config(), return_vgg=True)


def test_every_key_used_and_buffers_ignored(sd):
  full = dict(sd)
  full["encoder.backbone.layers.0.blocks.0.attn.relative_position_index"] = (
      np.zeros((64, 64), np.int64))
  model, vgg = official.load_official(full, fixture_model_config(),
                                     return_vgg=True)
  assert vgg is not None
  back = official.to_official_state_dict(model, vgg)
  assert set(back) == set(sd)   # every official key maps to a parameter
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k], err_msg=k)


def test_wrappers_and_file_formats(sd, reference, tmp_path):
  model, _ = reference
  wrapped = {"model": {"module." + k: v for k, v in sd.items()}}
  assert_same(official.load_official(wrapped, fixture_model_config()), model)
  np.savez(tmp_path / "w.npz", **sd)
  assert_same(official.load_official(tmp_path / "w.npz", fixture_model_config()),
              model)
  from safetensors.numpy import save_file
  save_file({k: np.ascontiguousarray(v) for k, v in sd.items()},
            str(tmp_path / "w.safetensors"))
  assert_same(official.load_official(str(tmp_path / "w.safetensors"),
                                    fixture_model_config()), model)


def test_pth_with_official_wrapping(sd, reference, tmp_path):
  torch = pytest.importorskip("torch")
  import argparse
  path = tmp_path / "checkpoint.pth"
  # The official Checkpointer also pickles its argparse.Namespace.
  torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
              "epoch": 3, "args": argparse.Namespace(lr=5e-4)}, path)
  assert_same(official.load_official(path, fixture_model_config()), reference[0])


@pytest.mark.parametrize("edit,needle", [
    (lambda d: d.pop("proj.bias"), "missing (1): proj.bias"),
    (lambda d: d.__setitem__("decoder.extra.weight", np.zeros(3)),
     "unexpected (1): decoder.extra.weight"),
    (lambda d: d.__setitem__("proj.weight", np.zeros((3, 3), np.float32)),
     "mis-shaped (1): proj.weight (checkpoint (3, 3), model expects (256, 256))"),
    (lambda d: d.pop("vgg16.enc_3.4.bias"), "missing (1): vgg16.enc_3.4.bias"),
])
def test_bad_keys_are_named(sd, edit, needle):
  bad = dict(sd)
  edit(bad)
  with pytest.raises(ValueError) as e:
    official.load_official(bad, fixture_model_config())
  assert needle in str(e.value)


def test_non_strict_reports_and_keeps_initial_values(sd, reference, caplog):
  bad = dict(sd)
  del bad["proj.bias"]
  bad["junk"] = np.zeros(2)
  model = official.load_official(bad, fixture_model_config(), strict=False)
  ref = flat(reference[0])
  got = flat(model)
  np.testing.assert_array_equal(got[("proj", "kernel")], ref[("proj", "kernel")])
  assert got[("proj", "bias")].shape == (256,)   # initial value kept
  assert not np.array_equal(got[("proj", "bias")], ref[("proj", "bias")])


def test_wrong_architecture_is_an_error(sd):
  cfg = fixture_model_config()
  cfg.encoder.depths = [2, 2, 4, 2]
  with pytest.raises(ValueError, match="missing .*encoder.backbone.layers.2"):
    official.load_official(sd, cfg)


def test_bad_sources(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    official.load_official(tmp_path / "nope.pth", fixture_model_config())
  (tmp_path / "w.txt").write_text("x")
  with pytest.raises(ValueError, match="w.txt: unknown format"):
    official.load_official(tmp_path / "w.txt", fixture_model_config())


def test_torchvision_vgg16(sd, reference):
  tv = {}
  for k, v in sd.items():
    if k.startswith("vgg16."):
      _, group, idx, leaf = k.split(".")
      start = (0, 5, 10)[int(group[-1]) - 1]
      tv[f"features.{start + int(idx)}.{leaf}"] = v
  tv["classifier.0.weight"] = np.zeros((4, 4), np.float32)  # ignored
  vgg = vgg_weights.load_vgg(tv)
  ref = flat(reference[1], FrozenParam)
  for k, v in flat(vgg, FrozenParam).items():
    np.testing.assert_array_equal(v, ref[k])
  with pytest.raises(ValueError, match="features.0.weight"):
    vgg_weights.load_vgg({k: v for k, v in tv.items() if k != "features.0.weight"})


def _config_file(tmp_path):
  """A config file whose model is the fixture's."""
  cfg_file = tmp_path / "fixture_config.py"
  cfg_file.write_text(
      "from tests.fixture_utils import fixture_model_config\n"
      "from configs import upocr\n"
      "def get_config():\n"
      "  c = upocr.get_config('tiny')\n"
      "  c.model = fixture_model_config()\n"
      "  return c\n")
  return cfg_file


def test_convert_cli_writes_a_loadable_weight_dir(sd, reference, tmp_path):
  np.savez(tmp_path / "official.npz", **sd)
  cfg_file = _config_file(tmp_path)
  out = tmp_path / "weights"
  proc = subprocess.run(
      [sys.executable, "-m", "upocr_jax.weights.convert", f"--config={cfg_file}",
       f"--official={tmp_path / 'official.npz'}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Wrote" in proc.stdout
  model, vgg = weight_dir.load_weights(str(out), with_vgg=True)
  assert_same(model, reference[0])
  for k, v in flat(vgg, FrozenParam).items():
    np.testing.assert_array_equal(v, flat(reference[1], FrozenParam)[k])
  # A config of another architecture is refused with the differing field.
  other = fixture_model_config()
  other.encoder.embed_dim = 16
  with pytest.raises(ValueError, match="encoder.embed_dim"):
    weight_dir.load_weights(str(out), other)
  with pytest.raises(FileExistsError):
    weight_dir.save_weights(str(out), model)


def _torchvision_vgg(sd):
  tv = {}
  for k, v in sd.items():
    if k.startswith("vgg16."):
      _, group, idx, leaf = k.split(".")
      start = (0, 5, 10)[int(group[-1]) - 1]
      tv[f"features.{start + int(idx)}.{leaf}"] = v
  return tv


def test_convert_cli_vgg_in_strict_mode_and_errors_name_the_flags(
    sd, reference, tmp_path):
  np.savez(tmp_path / "no_vgg.npz",
           **{k: v for k, v in sd.items() if not k.startswith("vgg16.")})
  np.savez(tmp_path / "vgg16.npz", **_torchvision_vgg(sd))
  argv = ["upocr-convert", f"--config={_config_file(tmp_path)}",
          f"--official={tmp_path / 'no_vgg.npz'}"]
  # Strict (the default), without --vgg: the error names --vgg and --nostrict.
  with pytest.raises(ValueError, match=r"no vgg16\.\* keys: pass --vgg=FILE"
                     r".*--nostrict") as e:
    convert.main(argv + [f"--out={tmp_path / 'a'}"])
  assert "strict=False" not in str(e.value)
  # Strict with --vgg: the checkpoint needs no vgg16.* keys.
  out = tmp_path / "weights"
  convert.main(argv + [f"--vgg={tmp_path / 'vgg16.npz'}", f"--out={out}"])
  # The config's image size (tiny: 64) is prediction's default for it.
  assert weight_dir.read_image_size(str(out)) == 64
  model, vgg = weight_dir.load_weights(str(out), with_vgg=True)
  assert_same(model, reference[0])
  for k, v in flat(vgg, FrozenParam).items():
    np.testing.assert_array_equal(v, flat(reference[1], FrozenParam)[k])
  # A mis-shaped key: the command line's error names --nostrict ...
  bad = dict(sd)
  bad["task_prompt.task_embedding.weight"] = np.zeros((1, 1), np.float32)
  np.savez(tmp_path / "bad.npz", **bad)
  argv[2] = f"--official={tmp_path / 'bad.npz'}"
  with pytest.raises(ValueError, match="pass --nostrict") as e:
    convert.main(argv + [f"--out={tmp_path / 'b'}"])
  assert "task_prompt.task_embedding.weight" in str(e.value)
  assert "strict=False" not in str(e.value)
  # ... and the library's names its keyword argument.
  with pytest.raises(state_dict.StrictLoadError, match="pass strict=False"):
    official.load_official(bad, fixture_model_config())
  # The renamed input flag: --checkpoint is not upocr-convert's.
  with pytest.raises(Exception, match="checkpoint"):
    convert.main(["upocr-convert", f"--checkpoint={tmp_path / 'bad.npz'}",
                  f"--out={tmp_path / 'c'}"])
