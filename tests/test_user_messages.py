"""What the commands tell the user: the image size prediction uses, what to do
about weights without a VGG16, quiet library logs, progress lines, data errors
from worker processes."""

import logging as std_logging
import os
import pickle

import numpy as np
import pytest
from absl import logging
from flax import nnx

from configs import loss_optim_config
from input_pipeline import pipeline
from input_pipeline.schema import DataError
from tests import inference_helpers as helpers
from tests.training import train_helpers as th
from upocr_jax import cli_flags
from upocr_jax.inference.predictor import Predictor
from upocr_jax.models import ConfigError
from upocr_jax.train import checkpoint
from upocr_jax.train.metric_writer import format_line
from upocr_jax.weights import vgg_weights
from upocr_jax.weights import weight_dir


@pytest.fixture
def absl_info():
  """absl INFO records reach pytest's caplog during the test."""
  before = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  yield
  logging.set_verbosity(before)


def _workdir(root, image_size: int) -> str:
  """A training workdir with one checkpoint of a micro model trained (as far
  as its config says) at ``image_size``."""
  config = th.micro_config(per_task=1)
  config.data.image_size = image_size
  params = nnx.to_pure_dict(nnx.state(helpers.random_model(config),
                                      nnx.Param))
  data_iter = pipeline.create_train_iterator(config, 0, 1, 1)
  ckpt = checkpoint.Checkpointer(str(root), every=1, keep=1)
  ckpt.save(1, params, {"count": np.zeros((), np.int32)}, data_iter, config,
            force=True)
  ckpt.close()
  return str(root)


def test_predictor_uses_the_image_size_of_a_workdir(tmp_path, caplog,
                                                    absl_info):
  wd = _workdir(tmp_path / "run", image_size=96)
  with caplog.at_level(std_logging.INFO):
    assert Predictor.from_checkpoint(wd).image_size == 96
  assert "image size 96" in caplog.text
  # --image_size (and the API's argument) still wins.
  assert Predictor.from_checkpoint(wd, image_size=64).image_size == 64


def test_predictor_uses_the_image_size_a_weight_dir_was_saved_with(
    tmp_path, caplog, absl_info):
  model = helpers.random_model()
  sized, plain = str(tmp_path / "sized"), str(tmp_path / "plain")
  weight_dir.save_weights(sized, model, image_size=128)
  weight_dir.save_weights(plain, model)
  assert weight_dir.read_image_size(sized) == 128
  assert weight_dir.read_image_size(plain) is None
  with caplog.at_level(std_logging.INFO):
    assert Predictor.from_checkpoint(sized).image_size == 128
    # Nothing saved: the config's size when one is given, else the paper's.
    assert Predictor.from_checkpoint(
        plain, config=helpers.tiny_config()).image_size == 64
    assert Predictor.from_checkpoint(plain).image_size == 512
  assert "image size 512" in caplog.text and "records no image size" in \
      caplog.text


def test_vgg_weights_without_vgg_say_what_to_do(tmp_path):
  loss = loss_optim_config.get_loss_config("paper")
  # A converted UPOCR release: a weight directory without VGG16.
  loss.vgg_weights = helpers.random_weights_dir(tmp_path / "release")
  with pytest.raises(ConfigError) as e:
    vgg_weights.load_loss_vgg(loss)
  msg = str(e.value)
  assert msg.startswith("config.loss.vgg_weights: ") and "\n" not in msg
  assert "pretraining_weights.pth" in msg and "--nostrict" in msg
  assert "config.init_from" in msg
  # A state-dict file with neither official nor torchvision VGG16 keys.
  np.savez(tmp_path / "other.npz", w=np.zeros(3, np.float32))
  loss.vgg_weights = str(tmp_path / "other.npz")
  with pytest.raises(ConfigError, match=r"no vgg16\.\* or features\.\* keys"
                     r".*pretraining_weights\.pth"):
    vgg_weights.load_loss_vgg(loss)
  loss.vgg_weights = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match="^config.loss.vgg_weights: "):
    vgg_weights.load_loss_vgg(loss)


def _record(path: str, level: int) -> std_logging.LogRecord:
  return std_logging.LogRecord("absl", level, path, 1, "m", (), None)


def test_quiet_logging_hides_only_library_info(tmp_path):
  ours = os.path.join(cli_flags.OWN_SOURCE_DIRS[0], "train", "trainer.py")
  lib = os.path.join(str(tmp_path), "orbax", "checkpoint_manager.py")
  f = cli_flags._LIBRARY_INFO_FILTER  # pylint: disable=protected-access
  assert f.filter(_record(ours, std_logging.INFO))
  assert not f.filter(_record(lib, std_logging.INFO))
  assert f.filter(_record(lib, std_logging.WARNING))


def test_progress_line_has_an_eta_only_once_timed():
  m = {"loss": 1.0, "grad_norm": 2.0, "lr": 1e-3, "loss/a": 0.5}
  untimed = format_line(1, 10, m, None, None)
  assert untimed.startswith("step 1/10 loss=1.0000") and "ETA" not in untimed
  assert "ETA 0h00m09s" in format_line(1, 10, m, 1.0, 3.0)


def test_data_errors_cross_process_boundaries():
  # grain's worker processes pickle an error to raise it in the main one.
  e = pickle.loads(pickle.dumps(DataError("/d/a.jpg", "truncated")))
  assert isinstance(e, DataError) and str(e) == "/d/a.jpg: truncated"
  assert (e.path, e.problem) == ("/d/a.jpg", "truncated")
