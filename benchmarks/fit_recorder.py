"""Compiling and recording the fit table's cases (benchmarks/fit_table.py):
one JSON line per compile, written at once; recorded cases are replayed."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import threading
import time
from typing import Any

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.fit_rows import PARALLELISM, case_key, memory, read_rows  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax.fit import report as fit_report  # noqa: E402
from upocr_jax.fit import targets  # noqa: E402
from upocr_jax.tasks import TASK_KEYS  # noqa: E402


def case_config(config, case: dict[str, Any]):
  """``config`` with the case's mesh, dtype, remat and (one chip) batch."""
  changes: dict[str, Any] = {"model.dtype": case["dtype"],
                             "model.remat": case["remat"] != "off"}
  if case["remat"] != "off":
    changes["model.remat_policy"] = case["remat"]
  if case["parallelism"] == "one_chip":
    changes["mesh.shape"] = (1, 1, 1)
    changes.update({f"data.{k}.batch_size": case["per_task"]
                    for k in TASK_KEYS})
  else:
    changes["mesh.shape"] = PARALLELISM[case["parallelism"]]
  return fit_report.with_changes(config, changes)


class Recorder:
  """Compiles cases, appending one JSON line each; replays recorded ones."""

  def __init__(self, config, path: str, append: bool,
               timeout_s: float = 0, fresh: bool = False):
    self.config = config
    self.path = path
    self.timeout_s = timeout_s
    self.fresh = fresh
    self._lock = threading.Lock()
    self.done: dict[str, dict[str, Any]] = {}
    if os.path.exists(path):
      if not append:
        raise cli_flags.UsageError(
            f"--out {path} exists; pass --append to add to it (resume) or "
            "name a new file")
      for row in read_rows(path):
        self.done[case_key(row["case"])] = row
    else:
      cli_flags.check_writable_dir(os.path.dirname(os.path.abspath(path)),
                                   "--out")
    self.targets: dict[str, targets.Target] = {}

  def target(self, case: dict[str, Any]) -> targets.Target:
    """The slice's devices; one of them for a one-chip case (v4 and v5p have
    no one-chip slice name; it is the same chip and compiler)."""
    topology = case["topology"]
    if topology not in self.targets:
      self.targets[topology] = targets.target_for(topology)
    t = self.targets[topology]
    return t.one_chip() if case["parallelism"] == "one_chip" else t

  def compile(self, case: dict[str, Any]) -> dict[str, Any]:
    """The recorded row of ``case``, compiling it first if it is new."""
    key = case_key(case)
    if key in self.done:
      return self.done[key]
    progress(f"compiling {_describe(case)} ...")
    watchdog = None
    if self.timeout_s:
      watchdog = threading.Timer(self.timeout_s, self._give_up, (case,))
      watchdog.daemon = True
      watchdog.start()
    start = time.perf_counter()
    report = fit_report.fit_report(case_config(self.config, case),
                                   self.target(case))
    wall = time.perf_counter() - start
    with self._lock:
      if watchdog:
        watchdog.cancel()
      if key in self.done:   # the watchdog gave up on it first
        return self.done[key]
      self._write(key, dict(case=case, report=report, wall_s=round(wall, 1),
                            **provenance()))
    progress(f"  {'fits' if report['fits'] else 'does not fit'}: "
             f"{memory(report)} ({wall:.0f} s)")
    if self.fresh:
      _restart_with_append()
    return self.done[key]

  def _give_up(self, case: dict[str, Any]) -> None:
    """The watchdog: records ``case`` as timed out, then restarts."""
    with self._lock:
      key = case_key(case)
      if key in self.done:   # finished just in time
        return
      self._write(key, dict(case=case, timed_out_s=self.timeout_s,
                            **provenance()))
      progress(f"  gave up after --compile_timeout_s={self.timeout_s:g} "
               "(recorded as timed out); restarting with --append")
      _restart_with_append()

  def record_inferred(self, case: dict[str, Any], why: str) -> None:
    """A rung not compiled because a cheaper case already rules it out."""
    key = case_key(case)
    if key not in self.done:
      self._write(key, {"case": case, "inferred": why})

  def _write(self, key: str, row: dict[str, Any]) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row, default=str) + "\n")
    self.done[key] = row


def provenance() -> dict[str, str]:
  """Where and when a row was compiled: date, host, jax version."""
  return {"date": datetime.date.today().isoformat(),
          "host": f"{platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} cores",
          "jax": jax.__version__}


def _restart_with_append() -> None:
  """Replaces this process (and the compile XLA will not let go of) with the
  same command plus --append, which resumes after the recorded rows."""
  sys.stdout.flush()
  sys.stderr.flush()
  argv = [a for a in sys.argv if a not in ("--append", "--noappend")]
  os.execv(sys.executable, [sys.executable] + argv + ["--append"])


def progress(msg: str) -> None:
  """A timestamped progress line on stderr."""
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _describe(case: dict[str, Any]) -> str:
  extra = (f", {case['per_task']} per task" if "per_task" in case else "")
  return (f"{case['topology']} {case['parallelism']} {case['dtype']} "
          f"remat={case['remat']}{extra}")


