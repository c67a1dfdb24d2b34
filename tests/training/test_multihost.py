"""Two processes on localhost (jax.distributed, CPU collectives over gloo)."""

import socket
import subprocess

import numpy as np

from tests.training import train_helpers as th

FLAGS = [*th.per_task_flags(8), "--config.optim.total_steps=4",
         "--config.train.checkpoint_every=3"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _two_processes(workdir, steps: int) -> list[str]:
  port = _free_port()
  procs = [subprocess.Popen(
      th.train_cmd(workdir, *FLAGS, f"--config.train.steps={steps}",
                   "--config.distributed.enabled=True",
                   f"--config.distributed.coordinator_address=localhost:{port}",
                   "--config.distributed.num_processes=2",
                   f"--config.distributed.process_id={i}"),
      cwd=th.REPO, env=th.env(devices=4), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = []
  for p in procs:
    out, err = p.communicate(timeout=400)
    assert p.returncode == 0, err[-4000:]
    logs.append(out + err)
  return logs


def test_two_processes_match_one_eight_device_process_and_resume(tmp_path):
  single = tmp_path / "single"
  th.run(th.train_cmd(single, *FLAGS, "--config.train.steps=4"), devices=8)
  ref = th.rows(single)

  multi = tmp_path / "multi"
  logs = _two_processes(multi, steps=3)
  assert "on 8 devices (2 processes)" in logs[0]
  # Saved collectively, then restored by both processes.
  logs = _two_processes(multi, steps=4)
  assert all("resuming from step 3" in log for log in logs)
  got = th.rows(multi)
  assert [r["step"] for r in got] == [1, 2, 3, 4]
  for a, b in zip(ref, got):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5,
                               err_msg=f"step {a['step']}")
