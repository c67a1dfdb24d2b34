"""benchmarks/infer_fit_table.py: the one-chip inference search and its table,
with the compiles faked by a memory model (no libtpu needed)."""

import json

import pytest

from benchmarks import infer_fit_table as table_script
from upocr_jax import cli_flags

GiB = 2**30
HBM = 16 * GiB  # v5e


def _report(batch: int, per_image: float = 0.25 * GiB,
            args: float = 0.4 * GiB, usable: float = 15.75 * GiB) -> dict:
  """A compile of ``batch`` images under a linear memory model; refused by
  the compiler when the temporaries exceed ``usable``, as libtpu words it."""
  temps = per_image * batch
  if temps > usable:
    return {"per_device_bytes": {"arguments": None, "temporaries": temps,
                                 "outputs_not_aliased": None, "total": None},
            "hbm_bytes": usable, "fits": False, "margin_bytes": usable - temps,
            "compiler_error": "memory required for HLO temporaries ...",
            "compile_s": 100.0}
  total = args + temps
  return {"per_device_bytes": {"arguments": args, "temporaries": temps,
                               "outputs_not_aliased": 0, "total": total},
          "hbm_bytes": HBM, "fits": total <= HBM, "margin_bytes": HBM - total,
          "roofline_estimate_s": 0.02 * batch,
          "images_per_s_estimate": 50.0, "compile_s": 100.0}


def test_next_batch_brackets_the_largest_fit():
  points = {}
  batch = 8
  while batch is not None:
    points[batch] = _report(batch)
    batch = table_script.next_batch(points, HBM)
  fits = max(b for b, r in points.items() if r["fits"])
  # 0.4 + 0.25 * 62 = 15.9 GiB fits in 16; 63 needs 16.15.
  assert fits == 62
  assert not points[63]["fits"]
  assert "compiler_error" not in points[63]
  # The line through two compiles lands on it: few compiles.
  assert len(points) <= 4
  # With the compiler refusing above 12 GiB of temporaries, its refusals
  # bound the search as well, and the line through the refusal's
  # temporaries finds the limit at once.
  points = {}
  batch = 8
  while batch is not None:
    points[batch] = _report(batch, usable=12 * GiB)
    batch = table_script.next_batch(points, HBM)
  assert max(b for b, r in points.items() if r["fits"]) == 48
  assert "compiler_error" in points[49]
  assert len(points) <= 4


def test_next_batch_is_not_slowed_by_memory_that_stops_growing():
  """Near the limit the compiler may schedule tighter and the totals stop
  growing; a secant step would then creep up one batch at a time."""
  def report(batch):
    if batch > 200:  # refused far above the flat stretch
      return _report(batch, per_image=0.1 * GiB, usable=15.75 * GiB)
    return _report(min(batch, 60), usable=16 * GiB)  # 15.4 GiB from 60 on

  points = {}
  batch = 8
  while batch is not None:
    points[batch] = report(batch)
    batch = table_script.next_batch(points, HBM)
  assert max(b for b, r in points.items() if r["fits"]) == 200
  assert not points[201]["fits"]
  # The flat stretch makes the line useless; bisecting the bracket from
  # 130 to 260 takes 7 compiles, the secant alone took 20.
  assert len(points) <= 13


def test_next_batch_halves_when_nothing_fits_yet():
  assert table_script.next_batch({8: _report(8, per_image=4 * GiB)},
                                 HBM) == 4
  assert table_script.next_batch({1: _report(1, per_image=20 * GiB)},
                                 HBM) is None


@pytest.fixture(name="fake")
def _fake(monkeypatch):
  calls = []

  def compile_point(config_args, topology, batch, image_size):
    calls.append((topology, batch, image_size, tuple(config_args)))
    return _report(batch)

  monkeypatch.setattr(table_script, "compile_point", compile_point)
  monkeypatch.setattr(table_script.topologies, "libtpu_available",
                      lambda: True)
  return calls


def _main(argv):
  fv, rest = cli_flags.parse(table_script.define_flags, argv)
  table_script.main(rest, fv)


def test_a_run_records_every_compile_resumes_and_prints_the_table(
    fake, tmp_path, monkeypatch, capsys):
  out = tmp_path / "rows.jsonl"
  argv = ["infer_fit_table.py", f"--out={out}", "--topologies=v5e:2x4",
          "--config.data.eval_batch_size=2"]
  monkeypatch.setattr("sys.argv", argv)
  _main(argv)
  rows = [json.loads(x) for x in out.read_text().splitlines()]
  assert [r["batch"] for r in rows] == [b for _, b, _, _ in fake]
  assert all(r["topology"] == "v5e:2x4" and r["image_size"] == 512
             for r in rows)
  # The config and its overrides reach the compile command.
  assert fake[0][3] == ("--config=paper", "--config.data.eval_batch_size=2")
  text = capsys.readouterr().out
  # 63 compiles but its total is over the chip's 16 GiB.
  assert "| v5e | 512 | 62 | 15.90 GiB (0.40 + 15.50 + 0.00) | 63: 16.15 " \
         "GiB (0.40 + 15.75 + 0.00) | 1240 | 50.0 | 100 |" in text
  # An existing file is refused without --append; with it, nothing is
  # compiled again.
  with pytest.raises(cli_flags.UsageError, match="exists: pass --append"):
    _main(argv)
  n = len(fake)
  _main(argv + ["--append"])
  assert len(fake) == n
  assert table_script.table(table_script.read_rows(str(out))) in \
      capsys.readouterr().out


def test_a_bad_line_names_the_file_and_line(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"report": {}}\nnot json\n')
  with pytest.raises(cli_flags.UsageError, match=r"bad.jsonl:2: not an "
                     r"infer_fit_table line"):
    table_script.read_rows(str(bad))
