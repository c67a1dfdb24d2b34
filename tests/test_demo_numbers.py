"""The README's demo numbers are the ones the demo command printed (issue 15.13).

docs/demo_numbers.py reads a finished run's metrics.jsonl into
docs/demo_numbers.json and writes the README's and docs/results.md's tables from
it; these tests fail when a table is edited by hand, when the record is not from
the current demo config, or when the trainer stops logging what the tool reads.
"""

import importlib.util
import io
import json
import os
import contextlib

import jax
import pytest

from configs import upocr as upocr_config
from tests.training import train_helpers as th
from upocr_jax.evaluation import baselines
from upocr_jax.tasks import task_key
from upocr_jax.train import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool():
  spec = importlib.util.spec_from_file_location(
      "demo_numbers", os.path.join(REPO, "docs", "demo_numbers.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _record() -> dict:
  with open(os.path.join(REPO, "docs", "demo_numbers.json"),
            encoding="utf-8") as f:
    return json.load(f)


def test_readme_and_results_tables_are_the_recorded_run():
  tool = _tool()
  want = tool.table(_record())
  for page, text in tool.page_tables().items():
    assert text == want, (f"{page}: the demo table is not the one "
                          "docs/demo_numbers.py writes from the record")


def test_record_is_a_full_run_of_the_current_demo_config():
  record = _record()
  tiny = upocr_config.get_config("tiny")
  assert record["step"] == tiny.train.steps
  assert set(record["model"]) == {f"{task_key(t)}/{m}"
                                  for t, m in baselines.HEADLINE}
  assert record["command"] in open(os.path.join(REPO, "README.md"),
                                   encoding="utf-8").read()
  for key in ("date", "machine", "wall"):
    assert record[key], key


def test_tool_reads_what_the_trainer_prints(tmp_path):
  cfg = th.micro_config(per_task=1, steps=3)
  cfg.train.final_eval = True
  cfg.evals.max_examples = 3
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    trainer.run(cfg, str(tmp_path), devices=jax.devices()[:1])
  printed = out.getvalue()
  assert "final evaluation on held-out synthetic data" in printed
  record = _tool().read_run(str(tmp_path))
  assert record["step"] == 3
  for task, metric in baselines.HEADLINE:
    assert f"{task_key(task)}/{metric}" in record["model"]
    assert f" {metric} " in printed, (metric, printed)
  assert record["baselines"]["text_removal/identity/psnr"] > 0
  table = _tool().table({**record, "command": "c", "date": "d",
                         "machine": "m", "wall": "w"})
  assert "F of the tampered class" in table and "| text removal | PSNR |" in table


def test_missing_final_evaluation_is_one_clear_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
  with pytest.raises(ValueError, match="no final evaluation"):
    _tool().read_run(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
    _tool().read_run(str(tmp_path / "nope"))
