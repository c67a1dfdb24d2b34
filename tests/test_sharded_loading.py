"""Evaluation and prediction restore checkpoints straight into their shardings.

On a (1, 8, 1) FSDP mesh of 8 fake CPU devices: right after the restore every
parameter has the sharding training gives it, each device holds 1/8 of the big
kernels, and no device was handed more than its share (orbax reads each
device's slices; restoring whole arrays, to the host or a device, and then
resharding hands every device whole arrays).
"""

import collections
import contextlib
import math

import grain
import jax
import numpy as np
import pytest
from flax import nnx

from tests import inference_helpers as helpers
from upocr_jax import sharding
from upocr_jax.evaluation import cli as eval_cli
from upocr_jax.evaluation import evaluate
from upocr_jax.inference import runner
from upocr_jax.inference.predictor import Predictor
from upocr_jax.models import UPOCR
from upocr_jax.train import checkpoint

FSDP = (1, 8, 1)


def _fsdp_config():
  config = helpers.tiny_config()
  config.mesh.shape = FSDP
  return config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
  return helpers.random_weights_dir(tmp_path_factory.mktemp("shardload_w"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A training workdir whose latest checkpoint holds the random model."""
  root = str(tmp_path_factory.mktemp("shardload_run"))
  config = helpers.tiny_config()
  params = nnx.to_pure_dict(nnx.state(helpers.random_model(config), nnx.Param))
  data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
  ckpt = checkpoint.Checkpointer(root, every=1, keep=1, async_save=False)
  ckpt.save(7, params, {"count": np.zeros((), np.int32)}, data_iter, config,
            force=True)
  ckpt.close()
  return root


@pytest.fixture(scope="module")
def reference():
  """The random model's parameters, whole, as pure-dict numpy arrays."""
  state = nnx.state(helpers.random_model(), nnx.Param)
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def _bytes_per_device():
  """Bytes of one device's share of the tiny model on the FSDP mesh: its
  slice of each sharded parameter plus every replicated one whole."""
  config = _fsdp_config()
  abstract = nnx.eval_shape(lambda: UPOCR(config.model, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  shardings = sharding.state_shardings(state, sharding.make_mesh(config),
                                       config)
  return sum(math.prod(sh.shard_shape(x.shape)) * x.dtype.itemsize
             for x, sh in zip(jax.tree.leaves(nnx.to_pure_dict(state)),
                              jax.tree.leaves(nnx.to_pure_dict(shardings))))


class _DevicePutBytes:
  """Counts, per device, the bytes of the arrays ``jax.device_put`` is given
  for it while ``counting``. Restoring into the shardings, orbax hands each
  device its slices only; restoring whole first (to the host or one device)
  and resharding hands every device whole arrays, more than its share."""

  def __init__(self, monkeypatch):
    self.bytes = collections.Counter()
    self._active = False
    real = jax.device_put

    def spy(x, device=None, *args, **kwargs):
      if self._active:
        target = getattr(device, "sharding", device)  # a Format has one
        for leaf in jax.tree.leaves(x):
          if isinstance(target, jax.sharding.Sharding):
            size = math.prod(np.shape(leaf)) * np.result_type(leaf).itemsize
            for d in target.device_set:
              self.bytes[d.id] += size
      return real(x, device, *args, **kwargs)
    monkeypatch.setattr(jax, "device_put", spy)

  @contextlib.contextmanager
  def counting(self):
    self._active = True
    try:
      yield
    finally:
      self._active = False

  def check_at_most_one_share(self):
    share = _bytes_per_device()
    assert sorted(self.bytes) == list(range(8)), dict(self.bytes)
    over = {d: b for d, b in self.bytes.items() if b > share}
    assert not over, f"devices sent more than their share {share}: {over}"


@pytest.fixture
def device_put_bytes(monkeypatch):
  return _DevicePutBytes(monkeypatch)


@pytest.mark.parametrize("source", ["weights", "workdir"])
def test_load_on_mesh_restores_into_fsdp_shardings(
    source, weights, workdir, reference, device_put_bytes):
  # Both sources are written before the device_put spy starts (fixture order).
  path = {"weights": weights, "workdir": workdir}[source]
  with device_put_bytes.counting():
    model, mesh, par = runner.load_on_mesh(path, _fsdp_config())
  assert dict(mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
  state = nnx.state(model, nnx.Param)
  want = nnx.to_pure_dict(sharding.state_shardings(state, mesh, par))
  big = 0
  for x, sh, ref in zip(jax.tree.leaves(nnx.to_pure_dict(state)),
                        jax.tree.leaves(want), jax.tree.leaves(reference)):
    assert x.sharding == sh
    if any(sh.spec):
      big += 1
      # Each of the 8 devices holds an eighth: the array never was whole.
      assert len(x.addressable_shards) == 8
      for shard in x.addressable_shards:
        assert math.prod(shard.data.shape) * 8 == x.size
    np.testing.assert_array_equal(np.asarray(x), ref)
  assert big >= 10  # the tiny model's linear and conv kernels
  device_put_bytes.check_at_most_one_share()


def test_load_without_mesh_section_is_data_parallel(weights, reference):
  config = helpers.tiny_config()
  del config["mesh"]
  model, mesh, _ = runner.load_on_mesh(weights, config)
  assert dict(mesh.shape) == {"data": len(jax.devices())}
  for x, ref in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                    jax.tree.leaves(reference)):
    assert x.sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(x), ref)


def test_predictor_from_checkpoint_loads_sharded(weights, device_put_bytes):
  with device_put_bytes.counting():
    pred = Predictor.from_checkpoint(weights, config=_fsdp_config(),
                                     image_size=64, batch_size=2)
  qkv = pred.model.encoder.layers[0].blocks[0].attn.qkv.kernel[...]
  assert qkv.sharding.spec[0] == "fsdp"
  device_put_bytes.check_at_most_one_share()


def test_eval_cli_on_fsdp_mesh_matches_one_device(
    workdir, tmp_path, monkeypatch, device_put_bytes):
  load = runner.load_on_mesh

  def counted_load(*args, **kwargs):
    with device_put_bytes.counting():
      return load(*args, **kwargs)
  monkeypatch.setattr(eval_cli.runner, "load_on_mesh", counted_load)
  got = eval_cli.main([
      "upocr-eval", "--config=tiny", "--config.mesh.shape=(1,8,1)",
      "--config.data.synthetic.num_eval=5", "--checkpoint", workdir,
      "--dataset=synthetic", "--task=text removal",
      "--output_dir", str(tmp_path)])["text removal"]
  device_put_bytes.check_at_most_one_share()
  one_device = helpers.random_model()
  want = evaluate.evaluate(one_device, helpers.tiny_config(), "text removal",
                           "synthetic", progress=False)
  assert got["num_images"] == want["num_images"] == 5
  for k in ("psnr", "mse", "mssim", "pceps"):
    assert got[k] == pytest.approx(want[k], rel=1e-5), k
