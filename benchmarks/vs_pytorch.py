"""Side by side: the official PyTorch UPOCR train step and eval forward vs ours.

  python benchmarks/vs_pytorch.py --official /tmp/upocr_official
  python benchmarks/vs_pytorch.py --official /tmp/upocr_official \\
      --config=configs/upocr.py:tiny --size 64 --steps 2 --mode both

``--official``: a local checkout of https://github.com/shannanyinxiang/UPOCR
(the user fetches it; nothing of it is in this repository), with torch
installed; timm, torchvision and wandb are not needed (the official side
installs stand-ins, see ``benchmarks/vs_pytorch_official.py``).

Each measurement runs in its own process (this script with ``--side`` and
``--mode``), one after the other, so that each peak RSS (``ru_maxrss``) holds
one framework and one mode. Per mode, one JSON line: both sides' median, min
and max time per call over ``--steps`` calls after ``--warmup``, our compile
time, both peak RSS, parameter counts (a check that the models match), the
speed-up (official / ours time) and the RSS ratio (ours / official).

* train: the official ``engine/train.py`` iteration (``train_one_epoch``
  itself: forward, the official losses with the VGG16 terms, backward,
  clipping, AdamW) against our jitted train step (the same losses, clipping,
  AdamW, plus a finite-loss guard), on the same random batch of
  ``--batch_per_task`` images per task (3 tasks).
* infer: the official ``engine/val.py`` forward (eval mode, no grad, last
  output clamped) against ``upocr_jax.inference.runner.forward_fn``, batch 1
  (the model prepared once, as upocr-predict and upocr-eval run it).

Random weights on both sides (VGG16 too): speed depends on neither weights nor
data. float32 only. The official model is built with the hyper-parameters of
``--config`` (``vs_pytorch_common.official_argv``); the official step always
computes the perceptual and style terms, so ours does too (forced on).

Recomputation: ``--remat`` (on) recomputes every block in the backward pass on
both sides, like for like. ``--official_remat=off`` runs the official step
without its block checkpoints, as the official README trains (much more
memory), while ours keeps its remat (``--config.model.remat_policy`` picks
what it saves).

Threads: each side's process is pinned to the same ``--threads`` CPUs
(``sched_setaffinity``; XLA sizes its CPU thread pool from them),
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` are set to ``--threads`` and torch
gets ``torch.set_num_threads(--threads)``.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import sys
import time
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the repo root, for configs/ and benchmarks/

from benchmarks import vs_pytorch_common as common  # noqa: E402
from benchmarks import vs_pytorch_turns as turns  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402

_CONFIG = cli_flags.DEFINE_config(
    flags.FLAGS, default="paper",
    help_string="Config to time (default: the paper model)")
flags.declare_key_flag("config")  # listed by --help with this script's flags
_OFFICIAL = flags.DEFINE_string(
    "official", None, "Path of a local checkout of the official UPOCR "
    "repository (needed unless --side=ours).")
_MODE = flags.DEFINE_enum(
    "mode", "both", ("train", "infer", "both"),
    "What to time: the train step, the eval forward (batch 1), or both.")
_SIDE = flags.DEFINE_enum(
    "side", "both", ("both",) + common.SIDES,
    "both: run each side in its own process and print the comparison; "
    "official / ours: measure one side here and print its JSON report.")
_SIZE = flags.DEFINE_integer(
    "size", 0, "Image side in pixels (a multiple of 32); 0: the config's "
    "data.image_size (paper 512, tiny 64).")
_BATCH = flags.DEFINE_integer(
    "batch_per_task", 1, "Train images per task (3 tasks per step).")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed calls per side and mode.")
_WARMUP = flags.DEFINE_integer(
    "warmup", 1, "Untimed calls before the timed ones (after our compile).")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "CPU threads of each side (pinned CPUs, torch and OpenMP "
    "threads); 0: every CPU this process may use.")
_REMAT = flags.DEFINE_bool(
    "remat", True, "Recompute every transformer block in the backward pass "
    "on both sides (sets config.model.remat and the official "
    "--swin_use_checkpoint); the paper step does not fit 24 GiB without it.")
_OFFICIAL_REMAT = flags.DEFINE_enum(
    "official_remat", "same", common.OFFICIAL_REMAT,
    "The official side's block checkpointing (--swin_use_checkpoint): same "
    "as --remat (like for like), or on / off whatever ours does; off is the "
    "official README's training command, about 19 GiB at the paper size.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the random batch and weights.")
_INTERLEAVE = flags.DEFINE_bool(
    "interleave", False, "Keep both sides' processes alive and alternate "
    "their calls, one each per round (ours compiles first, alone), so that "
    "a shared machine's slow spells fall on both; both peaks are then "
    "resident at once. Adds speedup_paired: the median of the per-round "
    "ratios.")


def _threads(requested: int) -> int:
  cpus = len(os.sched_getaffinity(0))
  if requested > cpus:
    raise ValueError(f"--threads {requested}: only {cpus} CPUs are available "
                     "to this process")
  return requested or cpus


def _side_remat(side: str, mode: str) -> bool:
  return common.side_remat(side, mode, _REMAT.value, _OFFICIAL_REMAT.value)


def _settings(mode: str, size: int, threads: int) -> common.Settings:
  s = common.Settings(mode=mode, size=size, batch_per_task=_BATCH.value,
                      steps=_STEPS.value, warmup=_WARMUP.value,
                      threads=threads, official=_OFFICIAL.value or "",
                      seed=_SEED.value, interleave=_INTERLEAVE.value)
  common.check_settings(s)
  return s


def _pin(threads: int) -> None:
  """Pins this process to ``threads`` CPUs and sets the OpenMP / MKL thread
  counts; before torch or jax is imported, which size their pools from
  these."""
  cpus = sorted(os.sched_getaffinity(0))[:threads]
  os.sched_setaffinity(0, cpus)
  for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(threads)


def _last_json(stdout: str, what: str) -> dict[str, Any]:
  for line in reversed(stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  raise ValueError(f"the {what} process printed no JSON report")


def _official_commit(path: str) -> str | None:
  """The checkout's commit, when it is a git work tree (an archive is not)."""
  try:
    return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"],
                          capture_output=True, text=True, check=True,
                          timeout=30).stdout.strip() or None
  except (OSError, subprocess.SubprocessError):
    return None


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def meta(config, s: common.Settings, size: int) -> dict[str, Any]:
  """The fields of the JSON line that describe the run, not a side."""
  return {
      "config": config_flags.get_config_filename(flags.FLAGS["config"]),
      "overrides": {k: str(v) for k, v in
                    config_flags.get_override_values(
                        flags.FLAGS["config"]).items()},
      "image_size": size, "batch": len(common.task_ids(s.batch_per_task))
      if s.mode == "train" else 1,
      "dtype": "float32", "remat": bool(config.model.remat),
      "official_remat": _side_remat("official", s.mode),
      "threads": s.threads, "steps": s.steps, "warmup": s.warmup,
      "interleaved": s.interleave,
      "weights": "random (model and VGG16)",
      "official_path": os.path.abspath(s.official),
      "official_commit": _official_commit(s.official),
      "cpu": _cpu_model(), "num_cpus": len(os.sched_getaffinity(0)),
      "python": platform.python_version(),
      "date": time.strftime("%Y-%m-%d %H:%M"),
  }


def _child_cmd(argv: Sequence[str], side: str, mode: str) -> list[str]:
  # Flags given twice take the last value: the child's --side / --mode win.
  return [sys.executable, os.path.abspath(__file__), *argv[1:],
          f"--side={side}", f"--mode={mode}"]


def _report(stdout: str, returncode: int, side: str, mode: str
            ) -> dict[str, Any]:
  if returncode:
    raise RuntimeError(f"the {side} side's {mode} process failed (exit "
                       f"{returncode}); its error is above")
  return _last_json(stdout, f"{side} {mode}")


def _child(argv: Sequence[str], side: str, mode: str) -> dict[str, Any]:
  print(f"vs_pytorch: {mode}, {side} side ...", file=sys.stderr, flush=True)
  proc = subprocess.run(_child_cmd(argv, side, mode), stdout=subprocess.PIPE,
                        text=True, check=False)
  return _report(proc.stdout, proc.returncode, side, mode)


def _interleaved(argv: Sequence[str], s: common.Settings
                 ) -> dict[str, dict[str, Any]]:
  """Both sides' reports, their calls alternating (``vs_pytorch_turns``)."""
  procs = {}
  try:
    for side in ("ours", "official"):  # ours compiles while nothing else runs
      print(f"vs_pytorch: {s.mode}, starting the {side} side ...",
            file=sys.stderr, flush=True)
      procs[side] = subprocess.Popen(_child_cmd(argv, side, s.mode),
                                     stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
      turns.expect(procs[side], side, (turns.READY,))
    print(f"vs_pytorch: {s.mode}, {s.warmup + s.steps} alternating rounds "
          "...", file=sys.stderr, flush=True)
    turns.drive({side: procs[side] for side in common.SIDES},
                s.warmup + s.steps)
    reports = {}
    for side in common.SIDES:
      out = turns.rest(procs[side])
      reports[side] = _report(out, procs[side].returncode, side, s.mode)
    return reports
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()


def main(argv: Sequence[str]) -> None:
  config = _CONFIG.value
  size = _SIZE.value or int(config.data.image_size)
  threads = _threads(_THREADS.value)
  side, mode = _SIDE.value, _MODE.value
  if side != "ours" and not _OFFICIAL.value:
    raise ValueError("--official PATH (a checkout of the official UPOCR "
                     "repository) is required")
  if side != "ours" and not os.path.isfile(
      os.path.join(_OFFICIAL.value, "engine", "train.py")):
    raise FileNotFoundError(f"--official {_OFFICIAL.value}: not an official "
                            "UPOCR checkout (no engine/train.py)")
  modes = common.MODES if mode == "both" else (mode,)
  if side == "both":
    for m in modes:
      s = _settings(m, size, threads)
      cfg = common.prepare_config(config, size, s.batch_per_task,
                                  _side_remat("ours", m))
      if s.interleave:
        reports = _interleaved(argv, s)
      else:
        reports = {sd: _child(argv, sd, m) for sd in common.SIDES}
      print(json.dumps(common.combine(m, reports["official"], reports["ours"],
                                      meta(cfg, s, size))), flush=True)
    return
  if len(modes) != 1:
    raise ValueError(f"--side={side} measures one --mode: train or infer")
  s = _settings(modes[0], size, threads)
  cfg = common.prepare_config(config, size, s.batch_per_task,
                              _side_remat(side, s.mode))
  _pin(threads)
  # Imported only now and only this side: a process holds one framework, so
  # its peak RSS is that side's alone.
  module = importlib.import_module(f"benchmarks.vs_pytorch_{side}")
  print(json.dumps({"side": side, "mode": s.mode, **module.run(cfg, s)}),
        flush=True)


def _app_main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    main(sys.argv)
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    sys.exit(f"vs_pytorch: error: {e}")


if __name__ == "__main__":
  app.run(_app_main)
