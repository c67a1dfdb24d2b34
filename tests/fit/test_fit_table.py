"""benchmarks/fit_table.py: the remat ladder, the one-chip search, resume.

The TPU compiler is replaced by a memory model (temporaries proportional to
the images per chip, times a factor per dtype and remat rung), so the search
logic is checked in milliseconds; compiling for real is what the script (and
the ``tpu`` test of test_fit.py) does.
"""

import json
import threading

import pytest

from benchmarks import fit_recorder
from benchmarks import fit_rows
from benchmarks import fit_search
from benchmarks import fit_table
from upocr_jax import cli_flags
from upocr_jax.fit import report as fit_report
from upocr_jax.fit import targets
from upocr_jax.tasks import TASK_KEYS

GiB = 2**30
# GiB of temporaries per image on a chip, by (dtype, remat).
PER_IMAGE = {("bfloat16", False, None): 5.0, ("bfloat16", True, "dots"): 1.4,
             ("bfloat16", True, "full"): 1.2, ("float32", False, None): 5.6,
             ("float32", True, "dots"): 2.6, ("float32", True, "full"): 1.9}
ARGS = 1.25 * GiB


def _fake_report(config, target):
  """What fit_report.fit_report returns, from the memory model."""
  m = config.model
  key = (m.dtype, bool(m.remat), m.remat_policy if m.remat else None)
  batch = sum(config.data[k].batch_size for k in TASK_KEYS)
  n = len(target.devices)
  fsdp = tuple(config.mesh.shape) == (1, -1, 1)
  args = ARGS / n if fsdp else ARGS
  temps = PER_IMAGE[key] * GiB * batch / n
  total = args + temps
  out = {"target": target.name, "devices": n, "batch": batch,
         "dtype": m.dtype, "hbm_bytes": target.hbm_bytes,
         "per_device_bytes": {"arguments": args, "temporaries": temps,
                              "outputs_not_aliased": 0, "total": total},
         "fits": total <= target.hbm_bytes,
         "roofline_estimate_s": 0.5 * batch / n}
  if temps > target.hbm_bytes:   # the compiler refuses it
    out.update(compiler_error="exceeds available HBM",
               per_device_bytes={"arguments": None, "temporaries": temps,
                                 "outputs_not_aliased": None, "total": None})
  CALLS.append(key + (batch, n))
  return out


CALLS = []


@pytest.fixture(name="fake")
def _fake(monkeypatch):
  CALLS.clear()
  monkeypatch.setattr(fit_report, "fit_report", _fake_report)

  def target_for(topology):
    t = fit_table.topologies.get(topology)
    return targets.Target(topology, list(range(t.chips)),
                             t.generation.hbm_bytes, 1e14, 1e12)
  monkeypatch.setattr(targets, "target_for", target_for)
  monkeypatch.setattr(fit_table.topologies, "libtpu_available", lambda: True)
  # --fresh_process restarts after each compile; here the run goes on in
  # this process (test_a_run_restarted_after_every_compile_... restarts).
  monkeypatch.setattr(fit_recorder, "_restart_with_append", lambda: None)


def _run(argv):
  fv, rest = cli_flags.parse(fit_table.define_flags, ["fit_table.py"] + argv)
  fit_table.main(rest, fv)


def _rows(path):
  return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_ladder_stops_at_the_first_fit_and_float32_starts_at_bf16s_rung(
    fake, tmp_path, capsys):
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v5e:2x4",
        "--noone_chip", "--only=parallelism=dp",
        "--config.data.text_removal.batch_size=16",
        "--config.data.text_segmentation.batch_size=16",
        "--config.data.tampered_text_detection.batch_size=16"])
  rows = _rows(out)
  got = [(r["case"]["dtype"], r["case"]["remat"],
          "inferred" if "inferred" in r else r["report"]["fits"])
         for r in rows]
  # 6 images per chip on 16 GiB: bf16 fits with dots (9.7 GiB), not without
  # remat (31 GiB); float32 skips "off" (inferred) and fits with dots (16.85
  # GiB > 16: no) then full.
  assert got == [("bfloat16", "off", False), ("bfloat16", "dots", True),
                 ("float32", "off", "inferred"), ("float32", "dots", False),
                 ("float32", "full", True)]
  assert "bfloat16 needed remat dots" in rows[2]["inferred"]
  table = capsys.readouterr().out
  assert "| v5e-8 | 8 | dp | bfloat16 | 6 | dots | yes |" in table
  assert "| v5e-8 | 8 | dp | float32 | 6 | full | yes |" in table
  assert "off: not compiled (bfloat16 needed remat dots)" in table


def test_resume_with_append_compiles_nothing_twice(fake, tmp_path):
  out = str(tmp_path / "t.jsonl")
  argv = [f"--out={out}", "--config=tiny", "--topologies=v5e:2x4",
          "--noone_chip", "--only=parallelism=dp,dtype=bfloat16"]
  _run(argv)
  first = len(CALLS)
  with pytest.raises(cli_flags.UsageError, match="exists; pass --append"):
    _run(argv)
  _run(argv + ["--append"])
  assert len(CALLS) == first and len(_rows(out)) == first


def test_one_chip_largest_batch_is_bracketed_by_a_fit_and_a_refusal(
    fake, tmp_path):
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v6e:2x4",
        "--only=dtype=bfloat16"])
  one = [r for r in _rows(out) if r["case"]["parallelism"] == "one_chip"]
  fits = {r["case"]["per_task"]: r["report"]["fits"] for r in one}
  # 32 GiB, 1.25 GiB args, 1.2 GiB per image: 25 images, 8 per task.
  best = max(k for k, ok in fits.items() if ok)
  assert best == 8 and fits[9] is False
  # The line through the first compile (4 per task) lands on 8 at once.
  assert sorted(fits) == [4, 8, 9]
  assert all(r["report"]["devices"] == 1 for r in one)


def test_one_chip_search_grows_where_the_temporaries_stop_growing(
    fake, tmp_path, monkeypatch):
  # As on v5p: near the limit the compiler schedules tighter and the
  # temporaries stop growing with the batch (here flat at 70 GiB from 59
  # images on), so the line keeps pointing at a batch known to fit. The
  # chip refuses above 40 per task.
  def report(config, target):
    out = _fake_report(config, target)
    per_task = config.data.text_removal.batch_size
    need = min(out["per_device_bytes"]["temporaries"], 70 * GiB)
    out.pop("compiler_error", None)
    out.update(fits=True, per_device_bytes={
        "arguments": ARGS, "temporaries": need, "outputs_not_aliased": 0,
        "total": ARGS + need})
    if per_task > 40:
      out.update(fits=False, compiler_error="exceeds available HBM")
    return out
  monkeypatch.setattr(fit_report, "fit_report", report)
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v5p:2x2x1",
        "--only=dtype=bfloat16,parallelism=one_chip"])
  tried = [r["case"]["per_task"] for r in _rows(out)]
  fits = {r["case"]["per_task"]: r["report"]["fits"] for r in _rows(out)}
  assert fits[40] and not fits[41], tried
  # Not one image per task at a time from 26 (16 compiles): grown by a
  # quarter past the flat part (35 -> 43), then bracketed.
  assert tried[:4] == [4, 26, 35, 43] and len(tried) <= 8, tried


def test_a_resumed_one_chip_search_ignores_chips_recorded_after_it(
    fake, tmp_path, monkeypatch):
  # Another chip's rows give only the first guess of a search that has no
  # compiles of its own; once v5p's search is recorded, v6e's rows added
  # later must not send a resumed v5p search down another path.
  def report(config, target):   # v6e's line is not v5p's
    out = _fake_report(config, target)
    if "v6e" in target.name:
      out["per_device_bytes"]["temporaries"] *= 1.1
    return out
  monkeypatch.setattr(fit_report, "fit_report", report)
  out = str(tmp_path / "t.jsonl")
  only = "--only=dtype=bfloat16,parallelism=one_chip"
  _run([f"--out={out}", "--config=tiny", "--topologies=v5p:2x2x1", only])
  _run([f"--out={out}", "--config=tiny", "--topologies=v6e:2x4", only,
        "--append"])
  n = len(CALLS)
  _run([f"--out={out}", "--config=tiny", "--topologies=v5p:2x2x1,v6e:2x4",
        only, "--append"])
  assert len(CALLS) == n


def test_only_rejects_an_unknown_key():
  with pytest.raises(cli_flags.UsageError, match="expected KEY=VALUE"):
    fit_table._only("chip=v4")  # pylint: disable=protected-access


def test_one_chip_search_of_a_second_chip_starts_from_the_first_ones_line(
    fake, tmp_path):
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v6e:2x4,v5p:2x2x1",
        "--only=dtype=bfloat16,parallelism=one_chip"])
  one = [r["case"] for r in _rows(out) if r["case"]["topology"] == "v5p:2x2x1"]
  # 95 GiB: 78 images, 26 per task; found by two compiles, 26 and 27.
  assert [c["per_task"] for c in one] == [26, 27]


def test_an_unfinished_ladder_is_not_reported_as_none_fits():
  refused = {"batch": 48, "devices": 8, "hbm_bytes": 16 * GiB, "fits": False,
             "compiler_error": "exceeds available HBM",
             "per_device_bytes": {"arguments": None, "temporaries": 32 * GiB,
                                  "outputs_not_aliased": None, "total": None}}
  row = {"case": {"topology": "v5e:2x4", "parallelism": "fsdp",
                  "dtype": "bfloat16", "remat": "off"},
         "report": refused, "wall_s": 208.0}
  assert "| unfinished (only up to off compiled) | no |" in fit_rows.table(
      [row])
  full = dict(row, case=dict(row["case"], remat="full"))
  assert "| none fits | no |" in fit_rows.table([row, full])



def test_a_refusal_with_the_whole_usage_shows_it_in_the_lower_rungs():
  items = {"arguments": 1.26 * GiB, "temporaries": 14.22 * GiB,
           "outputs_not_aliased": None, "total": 16.0 * GiB}
  report = {"fits": False, "compiler_error": "Exceeded hbm capacity by 4.29M",
            "per_device_bytes": items}
  assert fit_rows.memory(report) == (
      "refused, 16.00 GiB (1.26 args + 14.22 temps)")
  del report["compiler_error"]
  assert fit_rows.memory(report) == "16.00 GiB (1.26 args + 14.22 temps)"

def test_bfloat16_everywhere_runs_before_any_float32(fake, tmp_path):
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v5e:2x4,v6e:2x4"])
  dtypes = [r["case"]["dtype"] for r in _rows(out)]
  first_f32 = dtypes.index("float32")
  assert set(dtypes[:first_f32]) == {"bfloat16"}
  assert set(dtypes[first_f32:]) == {"float32"}
  # ...and the bfloat16 one-chip searches are among the bfloat16 rows.
  assert any(r["case"]["parallelism"] == "one_chip"
             for r in _rows(out)[:first_f32])


def _hang_on(monkeypatch, stuck):
  """fit_report blocks on the cases ``stuck`` picks until the watchdog's
  restart (here a stand-in that releases it) runs."""
  release = threading.Event()
  restarts = []

  def report(config, target):
    if stuck(config):
      release.wait(10)
    return _fake_report(config, target)

  def restart():
    restarts.append(1)
    release.set()
  monkeypatch.setattr(fit_report, "fit_report", report)
  monkeypatch.setattr(fit_recorder, "_restart_with_append", restart)
  return restarts


def test_a_compile_past_the_timeout_is_recorded_and_the_ladder_goes_on(
    fake, tmp_path, monkeypatch, capsys):
  restarts = _hang_on(monkeypatch, lambda c: not c.model.remat)
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v6e:2x4",
        "--noone_chip", "--only=parallelism=dp,dtype=bfloat16",
        "--compile_timeout_s=0.2", "--nofresh_process"])
  rows = _rows(out)
  assert [r["case"]["remat"] for r in rows] == ["off", "dots"]
  assert rows[0]["timed_out_s"] == 0.2 and "report" not in rows[0]
  assert rows[1]["report"]["fits"] and restarts
  assert "off: compile stopped after 0.2 s (not known)" in (
      capsys.readouterr().out)


def test_a_timed_out_one_chip_batch_is_an_upper_bound(
    fake, tmp_path, monkeypatch):
  per_task = lambda c: c.data.text_removal.batch_size  # noqa: E731
  _hang_on(monkeypatch, lambda c: per_task(c) >= 8)
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v6e:2x4",
        "--only=dtype=bfloat16,parallelism=one_chip",
        "--compile_timeout_s=0.2", "--nofresh_process"])
  rows = {r["case"]["per_task"]: r for r in _rows(out)}
  # 8 fits in the memory model but timed out: 7 is the largest known.
  assert "timed_out_s" in rows[8]
  assert rows[7]["report"]["fits"] and max(
      k for k, r in rows.items() if "report" in r and r["report"]["fits"]) == 7


def test_a_negative_timeout_is_a_usage_error(fake, tmp_path):
  with pytest.raises(cli_flags.UsageError, match="compile_timeout_s"):
    _run([f"--out={tmp_path / 't.jsonl'}", "--compile_timeout_s=-1"])


def test_a_case_whose_every_compile_timed_out_still_has_a_line():
  row = {"case": {"topology": "v6e:2x4", "parallelism": "dp",
                  "dtype": "bfloat16", "remat": "off"}, "timed_out_s": 3600}
  assert ("| v6e-8 | | dp | bfloat16 | | not known | not known |"
          in fit_rows.table([row]))
  assert "off: compile stopped after 3600 s" in fit_rows.table([row])


class _Restarted(Exception):
  pass


def test_a_run_restarted_after_every_compile_takes_the_same_path(
    fake, tmp_path, monkeypatch):
  argv = ["--config=tiny", "--topologies=v5e:2x4,v6e:2x4",
          "--only=parallelism=dp"]
  batch = [f"--config.data.{k}.batch_size=16" for k in TASK_KEYS]
  once = str(tmp_path / "once.jsonl")
  _run([f"--out={once}", "--nofresh_process"] + argv + batch)

  def restart():
    raise _Restarted
  monkeypatch.setattr(fit_recorder, "_restart_with_append", restart)
  out = str(tmp_path / "restarted.jsonl")
  runs = 0
  while True:   # what os.execv with --append does, one process per compile
    runs += 1
    try:
      _run([f"--out={out}"] + (["--append"] if runs > 1 else []) + argv
           + batch)
      break
    except _Restarted:
      pass
  strip = lambda rows: [(r["case"], r.get("report")) for r in rows]  # noqa
  assert strip(_rows(out)) == strip(_rows(once))
  assert runs == len(_rows(once)) - sum("inferred" in r
                                        for r in _rows(once)) + 1


def test_the_table_lists_slices_in_order_whatever_the_order_compiled():
  def row(topology, par, dtype):
    return {"case": {"topology": topology, "parallelism": par,
                     "dtype": dtype, "remat": "full"}, "timed_out_s": 1}
  rows = [row("v6e:2x4", "fsdp", "float32"), row("v4:2x2x1", "dp", "bfloat16"),
          row("v6e:2x4", "dp", "bfloat16"), row("v4:2x2x1", "fsdp", "bfloat16")]
  lines = fit_rows.table(rows).split("\n")[2:]
  cells = [[c.strip() for c in line.split("|")][1:5] for line in lines]
  assert [(c[0], c[2], c[3]) for c in cells] == [
      ("v4-8", "dp", "bfloat16"), ("v4-8", "fsdp", "bfloat16"),
      ("v6e-8", "dp", "bfloat16"), ("v6e-8", "fsdp", "float32")]


def test_a_one_chip_batch_is_not_called_the_largest_before_a_refusal():
  def row(per_task, fits):
    return {"case": {"topology": "v5p:2x2x1", "parallelism": "one_chip",
                     "dtype": "bfloat16", "remat": "full",
                     "per_task": per_task},
            "report": {"batch": 3 * per_task, "devices": 1, "fits": fits,
                       "hbm_bytes": 95 * GiB, "roofline_estimate_s": 0.2,
                       "per_device_bytes": {"arguments": GiB,
                                            "temporaries": 18 * GiB,
                                            "total": 19 * GiB}},
            "wall_s": 484.0}
  assert "| full; search unfinished (no larger batch refused yet) | yes |" in (
      fit_rows.table([row(4, True)]))
  assert "| 12 | full | yes |" in fit_rows.table([row(4, True),
                                                   row(5, False)])
  # A gap between the fit and the refusal is not searched yet.
  assert ("| 12 | full; search unfinished (smallest batch that did not fit "
          "so far: 18 images) | yes |") in fit_rows.table([row(4, True),
                                                             row(6, False)])


def _one_chip_row(topology, per_task, temps_gib):
  return {"case": {"topology": topology, "parallelism": "one_chip",
                   "dtype": "bfloat16", "remat": "full",
                   "per_task": per_task},
          "report": {"fits": True, "per_device_bytes": {
              "arguments": ARGS, "temporaries": temps_gib * GiB}}}


def test_a_new_chip_guesses_from_the_nearest_chip_and_the_nearest_slope():
  # Shaped like the recorded v4 and v5p searches: temporaries grow about
  # 2.5 GiB per image per task, then flatten near each chip's limit.
  v4 = {5: 18.82, 8: 26.34, 9: 30.43, 10: 30.74}
  v5p = {4: 18.46, 20: 70.86, 26: 70.02, 32: 79.43, 37: 93.48}
  rows = ([_one_chip_row("v4:2x2x1", k, t) for k, t in v4.items()]
          + [_one_chip_row("v5p:2x2x1", k, t) for k, t in v5p.items()])
  # v6e (32 GiB) and v5e (16 GiB) start from v4 (32 GiB), not from v5p.
  for chip in ("v6e:2x4", "v5e:2x4"):
    assert sorted(fit_search.nearest_chip_points(rows, chip, "bfloat16")) \
        == sorted(v4)
  assert fit_search.nearest_chip_points(rows, "v5p:2x2x1", "bfloat16") \
      .keys() == v4.keys()
  assert fit_search.nearest_chip_points(rows, "v5e:2x4", "float32") == {}
  points = fit_search.nearest_chip_points(rows, "v5e:2x4", "bfloat16")
  # 16 GiB less the arguments: on the slope of 5 -> 8 per task, 3 per task
  # (the flat last pair, 9 -> 10, would say 1).
  assert fit_search._solve(points, 16 * GiB - ARGS) == 3  # pylint: disable=protected-access


def test_a_float32_one_chip_search_starts_at_the_chips_bfloat16_answer(
    fake, tmp_path):
  out = str(tmp_path / "t.jsonl")
  _run([f"--out={out}", "--config=tiny", "--topologies=v6e:2x4",
        "--only=parallelism=one_chip"])
  tried = [r["case"]["per_task"] for r in _rows(out)
           if r["case"]["dtype"] == "float32"]
  fits = {r["case"]["per_task"]: r["report"]["fits"] for r in _rows(out)
          if r["case"]["dtype"] == "float32"}
  # bfloat16 fits 8 per task; float32 (1.9 GiB per image) fits 5.
  assert tried[0] == 8, tried
  assert max(k for k, ok in fits.items() if ok) == 5 and fits[6] is False
  assert len(tried) <= 4, tried
