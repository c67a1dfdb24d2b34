"""What upocr-train tells the user: a quiet log with its own progress lines,
and one-line errors for what a user can get wrong (config, data)."""

import os
import re
import subprocess
import sys

from input_pipeline import write_synthetic
from tests.input_pipeline import data_helpers
from tests.training import train_helpers as th

# An absl log line: level letter, date, time, thread, file:line].
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", re.M)
OWN_FILES = {"trainer.py", "checkpoint.py", "metric_writer.py", "main.py",
             "pipeline.py", "common.py", "synthetic.py", "preview.py"}


def _start(workdir, *extra) -> subprocess.CompletedProcess:
  return subprocess.run(th.train_cmd(workdir, *extra), cwd=th.REPO,
                        env=th.env(), capture_output=True, text=True,
                        timeout=400)


def _one_line_error(p: subprocess.CompletedProcess) -> str:
  """The error line of a failed run, checked to be all it printed about it."""
  assert p.returncode != 0, p.stdout[-2000:]
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  lines = p.stderr.strip().splitlines()
  assert lines and lines[-1].startswith("upocr-train: error: "), \
      p.stderr[-3000:]
  return lines[-1]


def test_log_is_quiet_says_compiling_done_and_resumed(tmp_path):
  wd = tmp_path / "run"
  p = _start(wd, "--config.train.steps=3")
  assert p.returncode == 0, p.stderr[-3000:]
  # Libraries' INFO (orbax logged ~45 lines per checkpoint) is hidden; our
  # own INFO lines still print.
  infos = [f for level, f in _LOG_LINE.findall(p.stderr) if level == "I"]
  assert infos and set(infos) <= OWN_FILES, sorted(set(infos) - OWN_FILES)
  assert "orbax" not in p.stderr
  out = p.stdout.splitlines()
  i = out.index("compiling the train step...")
  assert re.fullmatch(r"compiled the train step in [\d.]+ s", out[i + 1])
  steps = [line for line in out if line.startswith("step ")]
  assert [s.split()[1] for s in steps] == ["1/3", "2/3", "3/3"]
  # The first line's window held only the compiling step: no rate, no ETA;
  # the next ones are timed.
  assert "ETA" not in steps[0] and "steps/s" not in steps[0]
  assert "ETA" in steps[1] and "steps/s" in steps[1]

  again = _start(wd, "--config.train.steps=3")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "already at step 3 of 3" in again.stdout
  assert "nothing to do" in again.stdout
  assert "compiling" not in again.stdout

  more = _start(wd, "--config.train.steps=4")
  assert more.returncode == 0, more.stderr[-3000:]
  ckpt = os.path.join(str(wd), "checkpoints", "3")
  assert f"resuming from checkpoint {ckpt} (step 3 of 4)" in more.stdout
  assert [line.split()[1] for line in more.stdout.splitlines()
          if line.startswith("step ")] == ["4/4"]


def test_config_errors_are_one_line_naming_the_field(tmp_path):
  # The tiny config's own docstring example length: shorter than its warm-up.
  p = subprocess.run(
      [sys.executable, "-m", "upocr_jax.main", "--config=tiny",
       f"--workdir={tmp_path / 'run'}", "--config.train.steps=100"],
      cwd=th.REPO, env=th.env(), capture_output=True, text=True, timeout=300)
  line = _one_line_error(p)
  assert "config.optim.warmup_steps (600)" in line
  assert "--config.optim.warmup_steps=20" in line
  line = _one_line_error(_start(tmp_path / "mesh",
                                "--config.mesh.shape=(3,1,1)"))
  assert "config.mesh.shape" in line


def test_bad_training_image_is_one_line_before_compiling(tmp_path):
  roots = write_synthetic.write_dataset(str(tmp_path / "data"), num_train=3,
                                        num_test=1, seed=3,
                                        params=data_helpers.SMALL)
  root = roots["text_removal"]
  bad = os.path.join(root, "train", "image", "syn_00001.jpg")
  with open(bad, "wb") as f:
    f.write(b"not a jpeg")
  p = _start(tmp_path / "run", "--config.train.steps=3",
             "--config.data.text_removal.source=folder",
             f"--config.data.text_removal.root={root}")
  line = _one_line_error(p)
  assert bad in line and "not a readable image" in line
  assert "compiling" not in p.stdout
