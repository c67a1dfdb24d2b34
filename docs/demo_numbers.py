"""The demo's numbers in the README and docs/results.md, taken from a run's log.

The README shows what its first command prints; this keeps it so. After running
that command (from a fresh clone, timed), record the run and rewrite both tables:

    python docs/demo_numbers.py --workdir=runs/tiny --wall="7 min 50 s"

It reads the final evaluation and the trivial baselines from
``runs/tiny/metrics.jsonl`` (the rows the trainer prints at the end), writes them
with the date, machine and command to ``docs/demo_numbers.json``, and rewrites the
tables between the ``demo-numbers`` markers of README.md and docs/results.md.
``--check`` only checks that both tables match the record (tests do the same).
"""

import json
import os
import platform
import re
import sys
import time

from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from upocr_jax import cli_flags  # noqa: E402
from upocr_jax.evaluation import baselines  # noqa: E402
from upocr_jax.tasks import task_key  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(REPO, "docs", "demo_numbers.json")
PAGES = ("README.md", os.path.join("docs", "results.md"))
BEGIN = "<!-- demo-numbers: begin (written by docs/demo_numbers.py) -->"
END = "<!-- demo-numbers: end -->"
COMMAND = "upocr-train --config=configs/upocr.py:tiny --workdir=runs/tiny"
LABELS = {"psnr": "PSNR", "fgIoU": "fgIoU", "mean_F": "mean F (real, tampered)",
          "tampered_F": "F of the tampered class"}
BASELINE_NAMES = {"identity": "input returned unchanged",
                  "all_background": "all background", "all_text": "all text"}


def read_run(workdir: str) -> dict:
  """The final evaluation and baselines in ``workdir/metrics.jsonl``.

  Returns {'step', 'model': {'<task_key>/<metric>': v},
  'baselines': {'<task_key>/<name>/<metric>': v}} for every HEADLINE metric;
  NaN (an undefined F) becomes None.
  """
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no metrics log (is {workdir} a training "
                            "workdir of a finished run?)")
  final = None
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{n}: not a JSON line ({e})") from e
      if any(k.startswith("baseline/") for k in row):
        final = row
  if final is None:
    raise ValueError(f"{path}: no final evaluation against the baselines (the "
                     "run has not finished, or config.train.final_eval is off)")
  model, base = {}, {}
  for task, metric in baselines.HEADLINE:
    key = f"eval/synthetic/{task_key(task)}/{metric}"
    if key not in final:
      raise ValueError(f"{path}: the final row has no {key}")
    model[f"{task_key(task)}/{metric}"] = _num(final[key])
  for k, v in final.items():
    if k.startswith("baseline/"):
      base[k[len("baseline/"):]] = _num(v)
  return {"step": int(final["step"]), "model": model, "baselines": base}


def _num(v) -> float | None:
  v = float(v)
  return None if v != v else v


def _fmt(v: float | None, metric: str) -> str:
  if v is None:
    return "undefined (no pixel marked)"
  return f"{v:.2f} dB" if metric == "psnr" else f"{v:.4f}"


def table(record: dict) -> str:
  """The markdown table and caption between the markers."""
  lines = [f"| task | metric | tiny model, step {record['step']:,} | trivial "
           "baseline |", "| --- | --- | --- | --- |"]
  for task, metric in baselines.HEADLINE:
    key = task_key(task)
    base = []
    for k, v in record["baselines"].items():
      t, name, m = k.split("/")
      if t == key and m == metric:
        shown = "0" if not v else _fmt(v, metric)
        base.append(f"{shown} ({BASELINE_NAMES.get(name, name)})")
    lines.append(f"| {task} | {LABELS[metric]} | "
                 f"{_fmt(record['model'][f'{key}/{metric}'], metric)} | "
                 f"{', '.join(base)} |")
  lines += ["", f"Printed at the end of `{record['command']}` on "
            f"{record['date']}, {record['machine']}; {record['wall']} from a "
            "fresh clone, install included. An undefined F (no pixel of the "
            "class predicted) counts as 0 in the baselines."]
  return "\n".join(lines)


def _replace(text: str, body: str, path: str) -> str:
  pattern = re.compile(re.escape(BEGIN) + r"\n.*?\n" + re.escape(END), re.S)
  if len(pattern.findall(text)) != 1:
    raise ValueError(f"{path}: expected one {BEGIN!r} ... {END!r} block")
  return pattern.sub(lambda _: f"{BEGIN}\n{body}\n{END}", text)


def page_tables(repo: str = REPO) -> dict[str, str]:
  """{page: the text between its markers}."""
  out = {}
  for page in PAGES:
    with open(os.path.join(repo, page), encoding="utf-8") as f:
      text = f.read()
    m = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S)
    if m is None:
      raise ValueError(f"{page}: no {BEGIN!r} ... {END!r} block")
    out[page] = m.group(1)
  return out


def _machine() -> str:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      names = [ln.split(":", 1)[1].strip() for ln in f
               if ln.startswith("model name")]
    cpu = names[0] if names else cpu
  except OSError:
    pass
  return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str], f: flags.FlagValues) -> None:
  """Records a demo run and rewrites the tables, or checks them (--check)."""
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  if f.check:
    with open(RECORD, encoding="utf-8") as fh:
      want = table(json.load(fh))
    bad = [p for p, t in page_tables().items() if t != want]
    if bad:
      raise cli_flags.UsageError(f"{', '.join(bad)}: the demo table differs from "
                                f"{RECORD}; run python docs/demo_numbers.py")
    print("README.md and docs/results.md match docs/demo_numbers.json")
    return
  if not f.workdir or not f.wall:
    raise cli_flags.UsageError("--workdir and --wall are required (or --check)")
  record = {**read_run(f.workdir), "command": COMMAND,
            "date": f.date or time.strftime("%Y-%m-%d"),
            "machine": f.machine or _machine(), "wall": f.wall}
  with open(RECORD, "w", encoding="utf-8") as fh:
    json.dump(record, fh, indent=1)
    fh.write("\n")
  for page in PAGES:
    path = os.path.join(REPO, page)
    with open(path, encoding="utf-8") as fh:
      text = fh.read()
    with open(path, "w", encoding="utf-8") as fh:
      fh.write(_replace(text, table(record), page))
  print(f"wrote {RECORD}; rewrote the demo table of {', '.join(PAGES)}")


def _flags(fv: flags.FlagValues) -> None:
  del fv
  flags.DEFINE_string("workdir", None, "The demo run's workdir (runs/tiny).")
  flags.DEFINE_string("wall", None, "The command's wall time from a fresh "
                      "clone, install included, e.g. '7 min 50 s'.")
  flags.DEFINE_string("date", None, "Date of the run (default: today).")
  flags.DEFINE_string("machine", None, "The machine (default: CPU model and "
                      "core count of this one).")
  flags.DEFINE_boolean("check", False, "Only check that the pages match "
                       "docs/demo_numbers.json.")


if __name__ == "__main__":
  cli_flags.run("demo_numbers", __doc__, _flags, main)
