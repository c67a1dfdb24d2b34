"""The rows of the fit table (benchmarks/fit_table.py): the cases, reading
the JSON lines file, and the markdown table of docs/training.md."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from upocr_jax import cli_flags  # noqa: E402

DEFAULT_TOPOLOGIES = ("v4:2x2x1", "v5e:2x4", "v5p:2x2x1", "v6e:2x4")
# Marketing names (TensorCores for v4/v5p, chips for v5e/v6e).
SLICE_NAMES = {"v4:2x2x1": "v4-8", "v5e:2x4": "v5e-8", "v5p:2x2x1": "v5p-8",
               "v6e:2x4": "v6e-8"}
PARALLELISM = {"dp": (-1, 1, 1), "fsdp": (1, -1, 1)}
DTYPES = ("bfloat16", "float32")
# Rungs of the remat ladder, least recomputation first.
LADDER = ("off", "dots", "full")



def case_key(case: dict[str, Any]) -> str:
  """The key a case is recorded and looked up under."""
  return json.dumps(case, sort_keys=True)



def read_rows(path: str, field: str = "case",
              kind: str = "a fit_table") -> list[dict[str, Any]]:
  """The rows of a JSON lines file of ``kind`` whose rows all hold
  ``field`` (fit_table's: "case").

  Raises:
    UsageError: one line naming the file and line that is not a row.
  """
  rows = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      try:
        row = json.loads(line)
        if not isinstance(row, dict) or field not in row:
          raise ValueError(f"no '{field}' field")
      except ValueError as e:
        raise cli_flags.UsageError(f"{path}:{n}: not {kind} line "
                                   f"({e})") from e
      rows.append(row)
  return rows


def gib(x: float | None) -> str:
  """Bytes as GiB with two decimals ("" for None)."""
  return "" if x is None else f"{x / 2**30:.2f}"


def memory(report: dict[str, Any]) -> str:
  """A report's per-chip memory in words (refused: its temporaries)."""
  m = report["per_device_bytes"]
  if "compiler_error" in report and m["total"] is None:
    return f"refused, {gib(m['temporaries'])} GiB temporaries"
  if "compiler_error" in report:
    return (f"refused, {gib(m['total'])} GiB ({gib(m['arguments'])} args + "
            f"{gib(m['temporaries'])} temps)")
  return (f"{gib(m['total'])} GiB ({gib(m['arguments'])} args + "
          f"{gib(m['temporaries'])} temps)")


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
    groups.setdefault(case_key(g), []).append(row)
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
        lower.append(f"{label}: {memory(row['report'])}")
    per_chip = r["batch"] / r["devices"]
    est = r.get("roofline_estimate_s")
    m = r["per_device_bytes"]
    fits = "yes" if r["fits"] else "no"
    mem = (f"{gib(m['total'])} ({gib(m['arguments'])} + "
           f"{gib(m['temporaries'])})" if m["total"] is not None
           else f"{gib(m['temporaries'])} temps (refused)")
    lines.append(
        f"| {_slice_name(c)} | {r['devices']} | {c['parallelism']} | {c['dtype']} | "
        f"{per_chip:g} | {_rung_label(best, group)} | {fits} "
        f"| {mem} | {gib(r['hbm_bytes'])} | "
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


