"""The inference rows of the fit table (docs/evaluation.md): the largest batch
of the evaluation forward that fits on one chip of each TPU generation.

Usage: python benchmarks/infer_fit_table.py --out=FILE.jsonl [--append]
    [--topologies=v5e:2x4,...] [--image_size=512] [--start=8] [--config=paper]
       python benchmarks/infer_fit_table.py --from_jsonl=FILE.jsonl

Example (about two minutes per compile of the paper model on a 2-core host):
  python benchmarks/infer_fit_table.py \\
      --out=benchmarks/results/infer_fit_table.jsonl

Each compile is a separate process running what a user runs,
``python -m upocr_jax.evaluation.cli --config=... --compile_only
--topology=T --config.data.eval_batch_size=B`` (the TPU compiler from libtpu,
no TPU; the compiler does not give its memory back, so one process per
compile), and its JSON line is appended to ``--out`` at once (``--append``
resumes, skipping the compiles recorded). Per chip the search starts at
``--start`` images, then solves a line through the per-chip totals compiled
so far for the chip's HBM and compiles the guess, until a batch that fits
sits next to one that does not (refused by the compiler, or its total over
the chip's HBM). Times and images/s are roofline ESTIMATES (see
``upocr_jax.fit.infer_report``), not measurements.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import fit_rows  # noqa: E402
from benchmarks.fit_recorder import progress, provenance  # noqa: E402
from benchmarks.fit_rows import DEFAULT_TOPOLOGIES  # noqa: E402
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax.fit import topologies  # noqa: E402

USAGE = "\n\n".join(__doc__.split("\n\n")[:3])
Point = dict[str, Any]  # a recorded compile: its "report"


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  """The script's flags on ``fv``."""
  cli_flags.DEFINE_config(fv, argv, default="paper", help_string="Config "
                          "whose model is compiled (it and its --config.F=V "
                          "overrides are passed to upocr-eval)")
  flags.DEFINE_string("out", None, "JSON lines file, one line per compile, "
                      "written as it goes.", flag_values=fv)
  flags.DEFINE_bool("append", False, "Add to an existing --out file, "
                    "skipping compiles it already holds (resume).",
                    flag_values=fv)
  flags.DEFINE_list("topologies", list(DEFAULT_TOPOLOGIES), "TPU slices, one "
                    "chip of each (names of upocr_jax/fit/topologies.py).",
                    flag_values=fv)
  flags.DEFINE_integer("image_size", 512, "Image side (the paper's 512).",
                       flag_values=fv)
  flags.DEFINE_integer("start", 8, "First batch compiled per chip.",
                       flag_values=fv)
  flags.DEFINE_string("from_jsonl", None, "Print the table of this file and "
                      "stop (no compile).", flag_values=fv)


def next_batch(points: dict[int, Point], hbm: float) -> int | None:
  """The next batch to compile for one chip, or None when the search is
  done: the largest fitting batch sits next to one that does not fit.

  ``points`` maps compiled batches to their reports. Memory grows about
  linearly with the batch, so the guess solves a line for the limit: with
  no batch over yet, the line through the two fitting batches nearest the
  limit (with one, through its arguments at batch 0) for the chip's
  ``hbm``; once one is
  over, the line between the largest fit and the smallest batch over, for
  that batch's limit (its total for ``hbm``, or, where the compiler refused
  it, its temporaries for the compiler's own usable figure), kept inside
  the bracket; where that line's slope disagrees with the one below the
  largest fit, the bracket is bisected instead.
  """
  fits = sorted(b for b, r in points.items() if r["fits"])
  over = sorted(b for b, r in points.items() if not r["fits"])
  low = fits[-1] if fits else 0
  high = over[0] if over else None
  if high is not None and high == low + 1:
    return None
  if not fits:
    return max(1, high // 2)
  if high is None:
    t1 = points[low]["per_device_bytes"]["total"]
    if len(fits) == 1:  # the weights do not grow with the batch
      args = points[low]["per_device_bytes"]["arguments"]
      return max(int(low * (hbm - args) / (t1 - args)), low + 1)
    b0 = fits[-2]
    slope = (t1 - points[b0]["per_device_bytes"]["total"]) / (low - b0)
    return max(int(low + (hbm - t1) / slope) if slope > 0 else 2 * low,
               low + 1)
  r_high = points[high]
  what, limit = (("temporaries", r_high["hbm_bytes"])
                 if r_high["per_device_bytes"]["total"] is None
                 else ("total", hbm))
  y0 = points[low]["per_device_bytes"][what]
  y1 = r_high["per_device_bytes"][what]
  if y0 is None or y1 is None:  # a refusal that gave no figure
    return (low + high) // 2
  slope = (y1 - y0) / (high - low)
  if len(fits) > 1:
    y = points[fits[-2]]["per_device_bytes"][what]
    below = (y0 - y) / (low - fits[-2])
  else:
    below = slope
  # Memory need not be linear near the limit (the compiler may schedule
  # tighter and the totals stop growing): where the slope below the
  # largest fit and across the bracket disagree, the line is no guide and
  # the bracket is bisected.
  if slope <= 0 or not 0.8 <= below / slope <= 1.25:
    return (low + high) // 2
  guess = int(low + (limit - y0) / slope)
  return min(max(guess, low + 1), high - 1)


def compile_point(config_args: list[str], topology: str, batch: int,
                  image_size: int) -> dict[str, Any]:
  """Runs the user's compile-only command in a fresh process with
  ``config_args`` (``--config=...`` and its overrides); its report."""
  cmd = [sys.executable, "-m", "upocr_jax.evaluation.cli", *config_args,
         "--compile_only", f"--topology={topology}",
         f"--config.data.eval_batch_size={batch}",
         f"--config.data.image_size={image_size}"]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  lines = [x for x in proc.stdout.splitlines()
           if x.startswith('{"compile_only"')]
  if proc.returncode or not lines:
    raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip().splitlines()[-1:]}")
  return json.loads(lines[-1])["compile_only"]


def search(topology: str, image_size: int, start: int,
           rows: list[dict[str, Any]],
           record: Callable[[dict[str, Any]], None],
           compile_fn: Callable[[str, int, int], dict[str, Any]]) -> None:
  """Compiles one chip of ``topology`` with ``compile_fn(topology, batch,
  image_size)`` until its largest batch is bracketed, resuming from the
  recorded ``rows``; ``record`` appends a new row."""
  hbm = topologies.get(topology).generation.hbm_bytes
  points = {r["batch"]: r["report"] for r in rows
            if r["topology"] == topology and r["image_size"] == image_size}
  batch = start if not points else next_batch(points, hbm)
  while batch is not None:
    progress(f"compiling 1 chip of {topology}: batch {batch} ...")
    t = time.perf_counter()
    report = compile_fn(topology, batch, image_size)
    row = {"topology": topology, "image_size": image_size, "batch": batch,
           "report": report, "wall_s": round(time.perf_counter() - t, 1),
           **provenance()}
    record(row)
    points[batch] = report
    progress(f"  {'fits' if report['fits'] else 'does not fit'}: "
              f"{_memory(report)} ({row['wall_s']:.0f} s)")
    batch = next_batch(points, hbm)


def _gib(x: float | None) -> str:
  return "?" if x is None else f"{x / 2**30:.2f}"


def _memory(report: dict[str, Any]) -> str:
  m = report["per_device_bytes"]
  if "compiler_error" in report:
    what = ("temporaries" if m["total"] is None else "total")
    return f"refused by the compiler, {_gib(m[what])} GiB {what}"
  return (f"{_gib(m['total'])} GiB ({_gib(m['arguments'])} + "
          f"{_gib(m['temporaries'])} + {_gib(m['outputs_not_aliased'])})")


def table(rows: list[dict[str, Any]]) -> str:
  """The markdown table: per chip and image size, the largest batch that
  fits and the smallest that does not."""
  lines = ["| chip | image | largest batch | per-chip memory (args + temps + "
           "outputs) "
           "| next batch | est. ms per batch | est. images/s | compile s "
           "| date |",
           "| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | --- |"]
  keys = sorted({(r["topology"], r["image_size"]) for r in rows})
  for topology, size in keys:
    pts = {r["batch"]: r for r in rows
           if (r["topology"], r["image_size"]) == (topology, size)}
    fit = max((b for b, r in pts.items() if r["report"]["fits"]), default=None)
    over = min((b for b, r in pts.items() if not r["report"]["fits"]),
               default=None)
    chip = topologies.get(topology).generation.name
    nxt = "" if over is None else f"{over}: {_memory(pts[over]['report'])}"
    if fit is None:
      lines.append(f"| {chip} | {size} | none | | {nxt} | | | | |")
      continue
    r = pts[fit]["report"]
    lines.append(
        f"| {chip} | {size} | {fit} | {_memory(r)} | {nxt} | "
        f"{r['roofline_estimate_s'] * 1e3:.0f} | "
        f"{r['images_per_s_estimate']:.1f} | {r['compile_s']:.0f} | "
        f"{pts[fit]['date']} |")
  return "\n".join(lines)


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of an infer_fit_table JSON lines file.

  Raises:
    UsageError: one line naming the file and line that is not a row.
  """
  return fit_rows.read_rows(path, field="report", kind="an infer_fit_table")


def main(argv: list[str], fv: flags.FlagValues) -> None:
  """Searches every chip (or prints a recorded table)."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  if fv.from_jsonl:
    print(table(read_rows(fv.from_jsonl)))
    return
  cli_flags.require(fv, "out")
  if fv.start < 1:
    raise cli_flags.UsageError(f"--start={fv.start}: must be >= 1")
  for t in fv.topologies:
    topologies.get(t)
  if not topologies.libtpu_available():
    raise cli_flags.UsageError("compiling for TPU needs libtpu: pip install "
                               "-e '.[tpu]' (no TPU needed)")
  if os.path.exists(fv.out) and not fv.append:
    raise cli_flags.UsageError(f"--out {fv.out} exists: pass --append to "
                               "resume it, or name a new file")
  cli_flags.check_writable_dir(os.path.dirname(os.path.abspath(fv.out)),
                               "--out")
  rows = read_rows(fv.out) if os.path.exists(fv.out) else []

  def record(row: dict[str, Any]) -> None:
    with open(fv.out, "a", encoding="utf-8") as f:
      f.write(json.dumps(row, default=str) + "\n")
    rows.append(row)

  # The config as given (name and overrides), for the subprocesses.
  config_args = [a for a in sys.argv[1:] if a.startswith("--config")]
  if not any(a.startswith(("--config=", "--config ")) for a in config_args):
    config_args.insert(0, "--config=paper")
  for t in fv.topologies:
    search(t, fv.image_size, fv.start, rows, record,
           lambda *a: compile_point(config_args, *a))
  print(table(rows))


if __name__ == "__main__":
  cli_flags.run("infer_fit_table.py", USAGE, define_flags, main,
                user_errors=(ValueError, RuntimeError, ImportError))
