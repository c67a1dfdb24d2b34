"""The training loop: config errors, exact resume, preemption, NaN, init_from."""

import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
from flax import nnx

from tests.training import train_helpers as th
from upocr_jax import config_checks
from upocr_jax.train import checkpoint
from upocr_jax.train import trainer
from upocr_jax.weights import weight_dir
from upocr_jax.models import UPOCR


@pytest.mark.parametrize("edit,field", [
    (lambda c: setattr(c.data.text_removal, "batch_size", 3),
     "config.data.text_removal.batch_size"),
    (lambda c: setattr(c.mesh, "shape", (3, 1, 1)), "config.mesh.shape"),
    (lambda c: setattr(c.data, "image_size", 48), "config.data.image_size"),
    (lambda c: setattr(c.model.encoder, "num_heads", (5, 2, 2, 4)),
     "config.model.encoder.num_heads[0]"),
])
def test_config_errors_name_the_field_before_compiling(tmp_path, edit, field):
  cfg = th.micro_config(per_task=2)
  cfg.mesh.shape = (2, 1, 1)
  edit(cfg)
  start = time.time()
  with pytest.raises(ValueError) as e:
    config_checks.check_config(cfg, num_devices=2)
  assert field in str(e.value)
  assert time.time() - start < 5  # nothing was compiled


def _wait_for(pred, proc, timeout=240):
  end = time.time() + timeout
  while time.time() < end:
    if pred():
      return
    if proc.poll() is not None:
      raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
    time.sleep(0.05)
  raise AssertionError("timed out")


def _committed_steps(wd):
  d = os.path.join(wd, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) \
      if os.path.isdir(d) else []


def test_exact_resume_after_sigterm_and_sigkill(tmp_path):
  steps = ["--config.train.steps=30", "--config.train.checkpoint_every=10"]
  straight = tmp_path / "straight"
  th.run(th.train_cmd(straight, *steps, "--config.train.preview_every=15"))
  ref = th.rows(straight)
  assert [r["step"] for r in ref] == list(range(1, 31))
  for key in ("loss", "lr", "grad_norm", "loss/textremoval_MSR_loss",
              "loss/textseg_l1_loss", "loss/ttd_l1_loss", "data_checksum"):
    assert all(np.isfinite(r[key]) for r in ref), key
  assert os.listdir(straight / "tensorboard")
  assert sorted(os.listdir(straight / "previews")) == [
      "step_0000015.png", "step_0000030.png"]

  wd = tmp_path / "interrupted"
  # 1) SIGTERM mid-run: a checkpoint at the step reached, exit code 0.
  p = subprocess.Popen(th.train_cmd(wd, *steps), cwd=th.REPO, env=th.env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: os.path.exists(wd / "metrics.jsonl")
            and len(th.rows(wd)) >= 3, p)
  p.send_signal(signal.SIGTERM)
  assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
  reached = th.rows(wd)[-1]["step"]
  assert reached < 30
  assert _committed_steps(wd)[-1] == reached
  # 2) Resume, then SIGKILL right after the next periodic checkpoint.
  p = subprocess.Popen(th.train_cmd(wd, *steps), cwd=th.REPO, env=th.env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: _committed_steps(wd)[-1] > reached, p)
  p.kill()
  p.wait()
  killed_at = _committed_steps(wd)[-1]
  assert killed_at < 30
  # 3) Resume to the end.
  out = th.run(th.train_cmd(wd, *steps))
  assert f"resuming from step {killed_at}" in out.stderr
  got = th.rows(wd)
  assert [r["step"] for r in got] == list(range(1, 31))
  for a, b in zip(ref, got):
    assert a["data_checksum"] == b["data_checksum"], a["step"]
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-6,
                               err_msg=f"step {a['step']}")


def test_second_ctrl_c_aborts_at_once():
  # What the process had before (SIG_IGN in a background job, e.g. under CI).
  before = signal.getsignal(signal.SIGINT)
  with trainer._Preemption() as p:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.01)  # Python runs the handler between bytecodes
    assert p.requested and p.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
      time.sleep(0.01)
  assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_checkpoints_and_incomplete_save_is_skipped_on_resume(tmp_path):
  steps = ["--config.train.steps=30", "--config.train.checkpoint_every=100"]
  wd = tmp_path / "run"
  # 1) Ctrl-C mid-run: a checkpoint at the step reached, one line, exit 0.
  p = subprocess.Popen(th.train_cmd(wd, *steps), cwd=th.REPO, env=th.env(),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: os.path.exists(wd / "metrics.jsonl")
            and len(th.rows(wd)) >= 3, p)
  p.send_signal(signal.SIGINT)
  assert p.wait(timeout=120) == 0, p.stderr.read()[-3000:]
  err = p.stderr.read()
  assert "KeyboardInterrupt" not in err
  reached = th.rows(wd)[-1]["step"]
  assert reached < 30
  assert _committed_steps(wd) == [reached]
  assert (f"SIGINT: stopped at step {reached} of 30; checkpoint "
          f"{wd}/checkpoints/{reached} written; run the same command to "
          "resume") in err
  # 2) A later save cut short (a second Ctrl-C or a kill inside it) leaves
  # N.orbax-checkpoint-tmp-*, and rows of steps that will be replayed.
  ckpts = wd / "checkpoints"
  tmp = f"{reached + 2}.orbax-checkpoint-tmp-1234567"
  shutil.copytree(ckpts / str(reached) / "params", ckpts / tmp / "params")
  with open(wd / "metrics.jsonl", "a") as f:
    for s in (reached + 1, reached + 2):
      f.write(json.dumps({"step": s, "loss": 1.0}) + "\n")
  # 3) Resume from the last complete checkpoint, say which, no duplicates.
  out = th.run(th.train_cmd(wd, *steps))
  assert f"incomplete checkpoint save(s) {tmp}" in out.stderr
  assert f"the last complete one is step {reached}" in out.stderr
  assert f"resuming from step {reached}" in out.stderr
  assert [r["step"] for r in th.rows(wd)] == list(range(1, 31))
  assert all(r["loss"] != 1.0 for r in th.rows(wd))
  assert _committed_steps(wd)[-1] == 30
  assert not checkpoint.incomplete_saves(str(wd))


class _NaNAt:
  """Wraps the train iterator; the n-th batch gets a NaN text-removal image."""

  def __init__(self, it, n):
    self.it, self.n, self.i = it, n, 0

  def __iter__(self):
    return self

  def __next__(self):
    b = dict(next(self.it))
    self.i += 1
    b["image"] = b["image"].astype(np.float32) / 255.0
    b["target"] = b["target"].astype(np.float32) / 255.0
    if self.i == self.n:
      b["image"][0] = np.nan  # example 0 is text removal
    return b

  # grain's orbax handler stores non-DatasetIterator states as bytes.
  def get_state(self):
    return json.dumps(self.it.get_state()).encode()

  def set_state(self, state):
    self.it.set_state(json.loads(state))


def test_nan_stops_with_step_and_terms_and_keeps_last_checkpoint(
    tmp_path, monkeypatch):
  real = trainer.pipeline.create_train_iterator
  monkeypatch.setattr(trainer.pipeline, "create_train_iterator",
                      lambda *a, **k: _NaNAt(real(*a, **k), 5))
  cfg = th.micro_config(per_task=1, steps=6)
  with pytest.raises(trainer.NonFiniteLossError) as e:
    trainer.run(cfg, str(tmp_path), devices=jax.devices()[:1])
  msg = str(e.value)
  assert "step 5" in msg and "loss/textremoval_MSR_loss" in msg
  assert "loss/ttd_l1_loss" not in msg   # the other tasks stayed finite
  assert _committed_steps(tmp_path) == [3]
  model = weight_dir.load_weights(str(tmp_path))
  assert all(np.isfinite(np.asarray(x)).all()
             for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_init_from_weight_directory(tmp_path):
  cfg = th.micro_config(per_task=1, steps=3)
  start = UPOCR(cfg.model, rngs=nnx.Rngs(123))
  weight_dir.save_weights(str(tmp_path / "w"), start)
  cfg.init_from = str(tmp_path / "w")
  # lr 0: the trained params must equal the imported ones exactly.
  cfg.optim.lr = cfg.optim.warmup_init_lr = cfg.optim.min_lr = 0.0
  trainer.run(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
  got = weight_dir.load_weights(str(tmp_path / "run"))
  want = nnx.to_flat_state(nnx.state(start, nnx.Param))
  have = dict(nnx.to_flat_state(nnx.state(got, nnx.Param)))
  for path, v in want:
    np.testing.assert_array_equal(np.asarray(have[path][...]),
                                  np.asarray(v[...]), err_msg=str(path))
  assert checkpoint.read_config(str(tmp_path / "run"))["init_from"] == str(
      tmp_path / "w")
