"""The fit table of docs/training.md: where the paper train step fits on TPUs.

Usage: python benchmarks/fit_table.py --out=FILE.jsonl [--append]
    [--only=KEY=VALUE,...] [--noone_chip] [--config=paper] [--config.F=V ...]
       python benchmarks/fit_table.py --from_jsonl=FILE.jsonl

Example (every row; hours on a 2-core host, so it writes as it goes and
``--append`` resumes where it stopped):
  python benchmarks/fit_table.py --out=benchmarks/results/fit_table.jsonl

Compiles the real train step (``upocr_jax.fit.report``, what ``upocr-train
--compile_only --topology=...`` runs) with the TPU compiler for each case
(needs libtpu: ``pip install -e '.[tpu]'``; no TPU):

* sliced cases: every topology of ``--topologies`` (default the 8-core/8-chip
  slices v4-8, v5e-8, v5p-8, v6e-8) x data parallel (mesh (-1,1,1)) and FSDP
  ((1,-1,1)) x bfloat16 and float32, at the config's global batch (the
  paper's 48). Each case climbs the remat ladder: no remat, remat policy
  ``dots`` (keeps the linears' outputs), policy ``full`` (keeps block inputs
  only), and stops at the first that fits. A float32 case starts at the rung
  its bfloat16 twin needed (float32 keeps every activation at least as large);
  the rungs it skips are written as ``inferred``, never as compiled.
* one chip of each generation (``--one_chip``): the largest batch (in whole
  images per task) that fits with remat ``full``, bracketed by compiles:
  it fits at that batch and is refused one image per task above. Guesses
  solve a line through the temporaries of the compiles so far; where the
  temporaries stop growing near the limit, the batch grows by a quarter
  until a refusal and the bracket is bisected.

Every bfloat16 case (slices, then one chip) runs before any float32 one,
so a run stopped early has the rows TPU users train with.

Each compile appends one JSON line to ``--out`` at once (the report of
``fit.report.fit_report`` plus the case); an existing file is refused unless
``--append``, which skips the compiles already recorded. A compile that runs
past ``--compile_timeout_s`` cannot be interrupted inside XLA, so the script
records it as timed out (not known to fit; the ladder goes on to the next
rung, a one-chip search takes it as an upper bound) and restarts itself
with ``--append``. It restarts after every compile too (``--fresh_process``,
on by default): the compiler does not give its memory back, and one process
grew past 21 GiB over three paper compiles. The searches are deterministic
given the recorded rows, so a restarted run takes the same path. At the
end, and with ``--from_jsonl``, it prints the markdown table of
docs/training.md. Step times and images/s are roofline ESTIMATES from XLA's
cost analysis, not measurements.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys
import threading
import time
from typing import Any, Iterator

from absl import flags
import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax.fit import report as fit_report  # noqa: E402
from upocr_jax.fit import topologies  # noqa: E402
from upocr_jax.tasks import TASK_KEYS  # noqa: E402

USAGE = __doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1]
DEFAULT_TOPOLOGIES = ("v4:2x2x1", "v5e:2x4", "v5p:2x2x1", "v6e:2x4")
# Marketing names (TensorCores for v4/v5p, chips for v5e/v6e).
SLICE_NAMES = {"v4:2x2x1": "v4-8", "v5e:2x4": "v5e-8", "v5p:2x2x1": "v5p-8",
               "v6e:2x4": "v6e-8"}
PARALLELISM = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1)}
DTYPES = ("bfloat16", "float32")
# Rungs of the remat ladder, least recomputation first.
LADDER = ("off", "dots", "full")


def define_flags(fv: flags.FlagValues, argv: list[str] | None = None) -> None:
  """The script's flags on ``fv``."""
  cli_flags.DEFINE_config(fv, argv, default="paper",
                          help_string="Config whose train step is compiled")
  flags.DEFINE_string("out", None, "JSON lines file, one line per compile, "
                      "written as it goes.", flag_values=fv)
  flags.DEFINE_bool("append", False, "Add to an existing --out file, "
                    "skipping compiles it already holds (resume).",
                    flag_values=fv)
  flags.DEFINE_list("topologies", list(DEFAULT_TOPOLOGIES), "TPU slices "
                    "(names of upocr_jax/fit/topologies.py).", flag_values=fv)
  flags.DEFINE_bool("one_chip", True, "Also find the largest batch on one "
                    "chip of each generation.", flag_values=fv)
  flags.DEFINE_string("only", "", "Only cases matching KEY=VALUE,... "
                      "(keys: topology, parallelism, dtype), e.g. "
                      "dtype=bfloat16,parallelism=dp.", flag_values=fv)
  flags.DEFINE_bool("fresh_process", True, "Restart (with --append) after "
                    "each compile: the compiler's memory is not given back, "
                    "and one process would grow from compile to compile.",
                    flag_values=fv)
  flags.DEFINE_float("compile_timeout_s", 0, "Give up a compile after this "
                       "many seconds (0: never): record it as timed out and "
                       "restart with --append to go on.", flag_values=fv)
  flags.DEFINE_string("from_jsonl", None, "Print the table of this file and "
                      "stop (no compile).", flag_values=fv)


def _only(spec: str) -> dict[str, str]:
  out = {}
  for part in filter(None, spec.split(",")):
    key, sep, value = part.partition("=")
    if not sep or key not in ("topology", "parallelism", "dtype"):
      raise cli_flags.UsageError(
          f"--only {part!r}: expected KEY=VALUE with KEY one of topology, "
          "parallelism, dtype")
    out[key] = value
  return out


def _matches(case: dict[str, Any], only: dict[str, str]) -> bool:
  return all(str(case.get(k)) == v for k, v in only.items())


def _key(case: dict[str, Any]) -> str:
  return json.dumps(case, sort_keys=True)


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
        self.done[_key(row["case"])] = row
    else:
      cli_flags.check_writable_dir(os.path.dirname(os.path.abspath(path)),
                                   "--out")
    self.targets: dict[str, fit_report.Target] = {}

  def target(self, case: dict[str, Any]) -> fit_report.Target:
    """The slice's devices; one of them for a one-chip case (v4 and v5p have
    no one-chip slice name; it is the same chip and compiler)."""
    topology = case["topology"]
    if topology not in self.targets:
      self.targets[topology] = fit_report.target_for(topology)
    t = self.targets[topology]
    if case["parallelism"] == "one_chip":
      t = dataclasses.replace(t, name=f"1 chip of {topology}",
                              devices=t.devices[:1])
    return t

  def compile(self, case: dict[str, Any]) -> dict[str, Any]:
    """The recorded row of ``case``, compiling it first if it is new."""
    key = _key(case)
    if key in self.done:
      return self.done[key]
    _progress(f"compiling {_describe(case)} ...")
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
                            **_provenance()))
    _progress(f"  {'fits' if report['fits'] else 'does not fit'}: "
              f"{_memory(report)} ({wall:.0f} s)")
    if self.fresh:
      _restart_with_append()
    return self.done[key]

  def _give_up(self, case: dict[str, Any]) -> None:
    """The watchdog: records ``case`` as timed out, then restarts."""
    with self._lock:
      key = _key(case)
      if key in self.done:   # finished just in time
        return
      self._write(key, dict(case=case, timed_out_s=self.timeout_s,
                            **_provenance()))
      _progress(f"  gave up after --compile_timeout_s={self.timeout_s:g} "
                "(recorded as timed out); restarting with --append")
      _restart_with_append()

  def record_inferred(self, case: dict[str, Any], why: str) -> None:
    """A rung not compiled because a cheaper case already rules it out."""
    key = _key(case)
    if key not in self.done:
      self._write(key, {"case": case, "inferred": why})

  def _write(self, key: str, row: dict[str, Any]) -> None:
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(row, default=str) + "\n")
    self.done[key] = row


def _provenance() -> dict[str, str]:
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


def read_rows(path: str) -> list[dict[str, Any]]:
  """The rows of a fit_table JSON lines file.

  Raises:
    UsageError: one line naming the file and line that is not a row.
  """
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or "case" not in row:
          raise ValueError("no 'case' field")
      except ValueError as e:
        raise cli_flags.UsageError(f"{path}:{n}: not a fit_table line "
                                   f"({e})") from e
      rows.append(row)
  return rows


def _progress(msg: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _describe(case: dict[str, Any]) -> str:
  extra = (f", {case['per_task']} per task" if "per_task" in case else "")
  return (f"{case['topology']} {case['parallelism']} {case['dtype']} "
          f"remat={case['remat']}{extra}")


def _gib(x: float | None) -> str:
  return "" if x is None else f"{x / 2**30:.2f}"


def _memory(report: dict[str, Any]) -> str:
  m = report["per_device_bytes"]
  if "compiler_error" in report:
    return f"refused, {_gib(m['temporaries'])} GiB temporaries"
  return (f"{_gib(m['total'])} GiB ({_gib(m['arguments'])} args + "
          f"{_gib(m['temporaries'])} temps)")


def sliced_cases(fv, only, dtype: str) -> Iterator[dict[str, Any]]:
  for topology in fv.topologies:
    for par in PARALLELISM:
      case = {"topology": topology, "parallelism": par, "dtype": dtype}
      if _matches(case, only):
        yield case


def run_ladder(rec: Recorder, base: dict[str, Any]) -> str | None:
  """Climbs the remat ladder of one case; the first rung that fits, or None."""
  start = 0
  if base["dtype"] == "float32":
    twin = _fitting_rung(rec, dict(base, dtype="bfloat16"))
    if twin is not None:
      start = LADDER.index(twin)
      for rung in LADDER[:start]:
        rec.record_inferred(dict(base, remat=rung),
                            f"bfloat16 needed remat {twin}")
  for rung in LADDER[start:]:
    row = rec.compile(dict(base, remat=rung))
    if "report" in row and row["report"]["fits"]:   # else refused/timed out
      return rung
  return None


def _fitting_rung(rec: Recorder, base: dict[str, Any]) -> str | None:
  for rung in LADDER:
    row = rec.done.get(_key(dict(base, remat=rung)))
    if row and "report" in row and row["report"]["fits"]:
      return rung
  return None


def largest_one_chip(rec: Recorder, topology: str, dtype: str) -> int | None:
  """Largest images-per-task on one chip of ``topology`` with remat full,
  bracketed by a fitting compile and a refused one (None if 1 per task is
  refused).

  Temporaries grow about linearly with small batches, and every compile
  gives them (a refusal too), so a guess solves a line through the compiles
  so far (``_solve``) for the chip's HBM. Near the limit they stop growing
  (the compiler schedules tighter: on v5p, 78 images needed less than 60),
  and the line then points at a batch already known to fit: there the
  search grows the batch by a quarter until a refusal. Where the line
  points at a fit that was not flat, it tries one image per task more; a
  bracket the line does not split is bisected. Another generation's
  one-chip compiles give the first guess. A timed-out compile is an upper
  bound (not known to fit).
  """
  base = {"topology": topology, "parallelism": "one_chip", "dtype": dtype,
          "remat": "full"}
  hbm = topologies.get(topology).generation.hbm_bytes
  # This chip's recorded compiles (None: timed out) are where a resumed
  # search goes on from, whatever other chips recorded since.
  points: dict[int, dict[str, Any] | None] = {
      row["case"]["per_task"]: row.get("report")
      for row in rec.done.values()
      if all(row["case"].get(k) == v for k, v in base.items())}
  # Else another chip's one-chip compiles (same program, same dtype) give
  # the first guess; else FIRST_PER_TASK.
  prior = {row["case"]["per_task"]: row["report"]
           for row in rec.done.values()
           if "report" in row and row["case"]["parallelism"] == "one_chip"
           and row["case"]["dtype"] == dtype
           and row["case"]["topology"] != topology}
  args = next((r["per_device_bytes"]["arguments"] for r in prior.values()
               if r["per_device_bytes"]["arguments"]), 0.0)
  k = None if points else (_solve(prior, hbm - args) if prior
                           else FIRST_PER_TASK)
  while True:
    if k is not None:
      points[k] = rec.compile(dict(base, per_task=k)).get("report")
    args = next((p["per_device_bytes"]["arguments"] for _, p in
                 sorted(points.items(), reverse=True)
                 if p and p["per_device_bytes"]["arguments"]), args)
    lo = max((j for j, p in points.items() if p and p["fits"]), default=0)
    hi = min((j for j, p in points.items() if not (p and p["fits"])),
             default=_UNBOUNDED)
    if hi == lo + 1:
      return lo or None
    known = {j: p for j, p in points.items() if p}
    k = _solve(known, hbm - args) if known else lo
    if not lo < k < hi:   # the line is no guide here
      k = (lo + hi) // 2 if hi < _UNBOUNDED else lo + 1
      if hi == _UNBOUNDED and _flat(known):
        k = lo + max(1, lo // 4)


def _flat(points: dict[int, dict[str, Any]]) -> bool:
  """Whether the two largest fitting batches needed no more temporaries from
  one to the other (the compiler scheduling tighter near the limit)."""
  fit = sorted(k for k, p in points.items() if p["fits"])[-2:]
  t = [points[k]["per_device_bytes"]["temporaries"] for k in fit]
  return len(t) == 2 and t[1] <= t[0]


# Images per task of the first one-chip compile (fits a 16 GiB chip in bf16).
FIRST_PER_TASK = 4
_UNBOUNDED = 10**6   # no refused batch yet


def _solve(points: dict[int, dict[str, Any]], budget: float) -> int:
  """Images per task whose temporaries just fit ``budget`` bytes, on the line
  through the two largest neighbouring batches whose temporaries still grew
  (through zero and the smallest batch when none did)."""
  ks = sorted(points)
  t = {k: points[k]["per_device_bytes"]["temporaries"] for k in ks}
  grew = [(a, b) for a, b in zip(ks, ks[1:]) if t[b] > t[a]]
  if grew:
    a, b = grew[-1]
    slope = (t[b] - t[a]) / (b - a)
    icpt = t[a] - slope * a
  else:
    slope, icpt = t[ks[0]] / ks[0], 0.0
  return max(1, int((budget - icpt) // slope))


def table(rows: list[dict[str, Any]]) -> str:
  """Markdown: one line per case, at the rung that fits (with the rungs below
  it and why they are not used)."""
  lines = ["| slice | chips | parallelism | dtype | images/chip | remat | "
           "fits | per-chip memory, GiB (args + temps) | HBM, GiB | "
           "est. step | est. images/s/chip | compile here | lower rungs |",
           "| --- | ---: | --- | --- | ---: | --- | --- | --- | ---: | ---: "
           "| ---: | ---: | --- |"]
  groups: dict[str, list[dict[str, Any]]] = {}
  for row in rows:
    c = row["case"]
    g = dict(c)
    g.pop("remat")
    if c["parallelism"] == "one_chip":
      g.pop("per_task")
    groups.setdefault(_key(g), []).append(row)
  for group in sorted(groups.values(), key=_order):
    compiled = [r for r in group if "report" in r]
    if not compiled:   # only inferred or timed-out rungs: nothing known
      stopped = [f"{r['case']['remat']}: compile stopped after "
                 f"{r['timed_out_s']} s" for r in group if "timed_out_s" in r]
      if stopped:
        c = group[0]["case"]
        lines.append(f"| {_slice_name(c)} | | {c['parallelism']} | "
                     f"{c['dtype']} | | not known | not known | | | | | | "
                     f"{'; '.join(stopped)} |")
      continue
    best = _pick(compiled)
    c, r = best["case"], best["report"]
    lower = []
    for row in group:
      if row is best:
        continue
      rc = row["case"]
      label = rc["remat"] + (f" @{rc['per_task'] * 3}" if "per_task" in rc
                             else "")
      if "inferred" in row:
        lower.append(f"{label}: not compiled ({row['inferred']})")
      elif "timed_out_s" in row:
        lower.append(f"{label}: compile stopped after {row['timed_out_s']} s"
                     " (not known)")
      else:
        lower.append(f"{label}: {_memory(row['report'])}")
    per_chip = r["batch"] / r["devices"]
    est = r.get("roofline_estimate_s")
    m = r["per_device_bytes"]
    fits = "yes" if r["fits"] else "no"
    mem = (f"{_gib(m['total'])} ({_gib(m['arguments'])} + "
           f"{_gib(m['temporaries'])})" if m["total"] is not None
           else f"{_gib(m['temporaries'])} temps (refused)")
    lines.append(
        f"| {_slice_name(c)} | {r['devices']} | {c['parallelism']} | {c['dtype']} | "
        f"{per_chip:g} | {_rung_label(best, group)} | {fits} "
        f"| {mem} | {_gib(r['hbm_bytes'])} | "
        f"{'' if est is None or not r['fits'] else f'{est:.3g} s'} | "
        f"{'' if est is None or not r['fits'] else f'{per_chip / est:.1f}'} "
        f"| {best['wall_s']:.0f} s | {'; '.join(lower)} |")
  return "\n".join(lines)


def _order(group: list[dict[str, Any]]) -> tuple:
  """Table order: slices first (by DEFAULT_TOPOLOGIES), then one chip; data
  parallel before FSDP; bfloat16 before float32."""
  c = group[0]["case"]
  known = list(DEFAULT_TOPOLOGIES)
  return (c["parallelism"] == "one_chip",
          known.index(c["topology"]) if c["topology"] in known else len(known),
          c["topology"], list(PARALLELISM).index(c["parallelism"])
          if c["parallelism"] in PARALLELISM else 0,
          DTYPES.index(c["dtype"]))


def _slice_name(case: dict[str, Any]) -> str:
  name = SLICE_NAMES.get(case["topology"], case["topology"])
  return name if case["parallelism"] != "one_chip" else f"1 chip of {name}"


def _rung_label(best: dict[str, Any], group: list[dict[str, Any]]) -> str:
  """The remat column: the rung shown, or why none is; a one-chip batch is
  only the largest once one image per task more did not fit (refused,
  too big, or timed out)."""
  compiled = [r for r in group if "report" in r]
  c = best["case"]
  if best["report"]["fits"]:
    if c["parallelism"] == "one_chip":
      above = [r["case"]["per_task"] for r in group
               if r["case"]["per_task"] > c["per_task"]
               and not r.get("report", {}).get("fits")]
      if not above:
        return f"{c['remat']}; search unfinished (no larger batch refused yet)"
      if min(above) > c["per_task"] + 1:
        return (f"{c['remat']}; search unfinished (smallest batch that did "
                f"not fit so far: {3 * min(above)} images)")
    return c["remat"]
  if best["case"]["parallelism"] != "one_chip" and not any(
      r["case"]["remat"] == LADDER[-1] for r in compiled):
    return f"unfinished (only up to {best['case']['remat']} compiled)"
  return "none fits"


def _pick(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The row a group is shown by: the fitting one with the most images, or
  the least recomputation; else the last compiled."""
  fitting = [r for r in rows if r["report"]["fits"]]
  if not fitting:
    return rows[-1]
  return max(fitting, key=lambda r: (r["report"]["batch"],
                                     -LADDER.index(r["case"]["remat"])))


def main(argv: list[str], fv: flags.FlagValues) -> None:
  """Compiles the cases (or prints a recorded table)."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  if fv.from_jsonl:
    print(table(read_rows(fv.from_jsonl)))
    return
  cli_flags.require(fv, "out")
  if fv.compile_timeout_s < 0:
    raise cli_flags.UsageError(f"--compile_timeout_s={fv.compile_timeout_s}:"
                               " must be >= 0 (0: no timeout)")
  for t in fv.topologies:
    topologies.get(t)
  only = _only(fv.only)
  if not topologies.libtpu_available():
    raise cli_flags.UsageError("compiling for TPU needs libtpu: pip install "
                               "-e '.[tpu]' (no TPU needed)")
  rec = Recorder(fv.config, fv.out, fv.append, fv.compile_timeout_s,
                 fresh=fv.fresh_process)
  # bfloat16 (what TPU users train with) everywhere first; float32 cases
  # start from their bfloat16 twins' rungs.
  for dtype in DTYPES:
    for case in sliced_cases(fv, only, dtype):
      run_ladder(rec, case)
    for t in fv.topologies if fv.one_chip else ():
      if _matches({"topology": t, "parallelism": "one_chip",
                   "dtype": dtype}, only):
        largest_one_chip(rec, t, dtype)
  print(table(list(rec.done.values())))


if __name__ == "__main__":
  cli_flags.run("fit_table.py", USAGE, define_flags, main,
                user_errors=(ValueError, RuntimeError))
