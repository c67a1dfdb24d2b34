"""One command-line style: the --config flag, --help, one-line errors."""

import os
import runpy
import subprocess
import sys

from absl import app, flags, logging
import pytest

from benchmarks import input_pipeline as bench_input
from benchmarks import predict as bench_predict
from benchmarks import scaling as bench_scaling
from benchmarks import train_step as bench_train_step
from input_pipeline import preview
from input_pipeline import write_synthetic
from input_pipeline.sources import tfds_builders
from upocr_jax import cli_flags
from upocr_jax import main as train_main
from upocr_jax.evaluation import cli as eval_cli
from upocr_jax.evaluation import fid
from upocr_jax.inference import cli as predict_cli
from upocr_jax.weights import convert

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUNDLED = os.path.join(REPO, "configs", "upocr.py")

# (name, usage text, define_flags, its own flags) of every entry point.
ENTRIES = [
    ("upocr-train", train_main.__doc__, train_main.define_flags,
     ["config", "workdir"]),
    ("upocr-eval", eval_cli.USAGE, eval_cli.define_flags,
     ["config", "checkpoint", "dataset", "output_dir", "inception_weights"]),
    ("upocr-predict", predict_cli.__doc__, predict_cli.define_flags,
     ["checkpoint", "task", "output_dir", "batch_size", "image_size",
      "config"]),
    ("upocr-convert", convert.USAGE, convert.define_flags,
     ["config", "official", "out", "vgg", "strict", "inception"]),
    ("fid", fid.USAGE, fid.define_flags, ["inception_weights", "batch_size"]),
    ("preview", preview.__doc__, preview.define_flags,
     ["config", "out", "per_task", "cell"]),
    ("write_synthetic", write_synthetic.__doc__, write_synthetic.define_flags,
     ["config", "out", "num_train", "num_test", "lossless"]),
    ("tfds_builders", tfds_builders.USAGE, tfds_builders.define_flags,
     ["dataset", "manual_dir", "data_dir"]),
    ("bench input", bench_input.__doc__, bench_input.define_flags,
     ["config", "num", "steps"]),
    ("bench predict", bench_predict.__doc__, bench_predict.define_flags,
     ["config", "size", "batch", "repeats"]),
    ("bench train_step", bench_train_step.__doc__,
     bench_train_step.define_flags, ["config", "batch_per_task", "profile"]),
    ("bench scaling", bench_scaling.__doc__, bench_scaling.define_flags,
     ["config", "meshes", "hlo_depths", "from_jsonl"]),
]
CONFIG_ENTRIES = [e for e in ENTRIES if "config" in e[3]]


@pytest.mark.parametrize("spec", ["tiny", "upocr:tiny", "upocr.py:tiny",
                                  "configs/upocr.py:tiny"])
def test_bundled_config_by_name_from_any_directory(spec, tmp_path,
                                                   monkeypatch):
  monkeypatch.chdir(tmp_path)
  path, arg = cli_flags.resolve_config(spec)
  assert os.path.samefile(path, BUNDLED) and arg == "tiny"
  assert cli_flags.load_config(spec).variant == "tiny"
  assert cli_flags.resolve_config("upocr") == (path, None)


def test_own_config_files_and_one_line_errors(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "mine.py").write_text(
      "import ml_collections\n"
      "def get_config(arg='a'):\n"
      "  return ml_collections.ConfigDict({'arg': arg, 'n': 1})\n")
  assert cli_flags.load_config("mine.py:b").arg == "b"
  assert cli_flags.load_config(str(tmp_path / "mine.py")).arg == "a"
  # A user's path that does not exist is not replaced by a bundled file.
  with pytest.raises(ValueError, match="no config file 'other/upocr.py'"):
    cli_flags.resolve_config("other/upocr.py:tiny")
  with pytest.raises(ValueError, match="no config file 'nope.py'.*upocr"):
    cli_flags.resolve_config("nope.py")

  def define(fv, argv):
    cli_flags.DEFINE_config(fv, argv)
  for argv, needle in [(["p", "--config=upocr:huge"], "unknown variant 'huge'"),
                       (["p", "--config=nope.py"], "nope.py"),
                       (["p", "--config=tiny", "--config.data.nope=1"],
                        "names no field")]:
    with pytest.raises(flags.Error, match=needle) as e:
      cli_flags.parse(define, argv)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


@pytest.mark.parametrize("name,usage,define,own", ENTRIES,
                         ids=[e[0] for e in ENTRIES])
def test_help_lists_own_flags_and_an_example(name, usage, define, own):
  text = cli_flags.entry_help(usage, define)
  lines = text.splitlines()
  assert "Example" in text and "Usage" in text, name
  for f in own:
    assert any(line.startswith((f"  --{f}:", f"  --[no]{f}:"))
               for line in lines), (name, f)
  # Its own flags only: not absl's (logging, help) nor other entries'.
  assert "--logtostderr" not in text and "--verbosity" not in text
  assert len(lines) < 60, name
  # Underscore names only.
  assert not [line for line in lines if line.startswith("  --")
              and "-" in line.split(":")[0][4:]], name


@pytest.mark.parametrize("name,usage,define,own", CONFIG_ENTRIES,
                         ids=[e[0] for e in CONFIG_ENTRIES])
def test_config_overrides_everywhere(name, usage, define, own):
  fv, rest = cli_flags.parse(define, [name, "--config=tiny",
                                      "--config.data.image_size=32", "pos"])
  assert fv.config.variant == "tiny" and fv.config.data.image_size == 32
  assert rest == [name, "pos"]


def _run(args, cwd=REPO):
  return subprocess.run([sys.executable] + args, cwd=cwd, capture_output=True,
                        text=True, timeout=300, check=False,
                        env={**os.environ, "PYTHONPATH": REPO})


@pytest.fixture
def program(monkeypatch, tmp_path):
  """Runs an entry point as a program in this process, as a console script
  does (__main__ is not the entry's module), on fresh absl flags; returns
  (exit code, stdout)."""

  verbosity = logging.get_verbosity()
  absl_flags = flags.FLAGS

  def run(argv, entry):
    fv = flags.FlagValues()
    # absl's own (logging) flags, which app.run reads; the entry adds its own.
    fv.append_flag_values(absl_flags)
    monkeypatch.setattr(flags, "FLAGS", fv)
    monkeypatch.setattr(app, "FLAGS", fv)
    monkeypatch.setattr(sys, "argv", list(argv))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
      entry()
    return e.value.code
  yield run
  logging.set_verbosity(verbosity)


# runpy re-runs an imported module as __main__, as python -m would.
@pytest.mark.filterwarnings("ignore:.*found in sys.modules")
@pytest.mark.parametrize("prog,entry", [
    ("upocr-train", lambda: train_main.run_main()),
    ("upocr-eval", lambda: eval_cli.run_main()),
    ("upocr-predict", lambda: predict_cli.run_main()),
    ("upocr-convert", lambda: convert.run_main()),
    ("python -m upocr_jax.inference.cli", lambda: runpy.run_module(
        "upocr_jax.inference.cli", run_name="__main__")),
    ("benchmarks/predict.py", lambda: runpy.run_path(
        os.path.join(REPO, "benchmarks", "predict.py"), run_name="__main__")),
])
def test_program_help(prog, entry, program, capsys):
  assert program([prog, "--help"], entry) == 0
  out = capsys.readouterr().out
  assert "Example" in out and "\nflags:\n" in out
  assert "  --config:" in out and "Try --helpfull" not in out
  assert "--logtostderr" not in out and len(out.splitlines()) < 60


@pytest.mark.filterwarnings("ignore:.*found in sys.modules")
def test_program_errors_are_one_line(program):
  code = program(["upocr-eval", "--config=missing.py"], eval_cli.run_main)
  assert code.startswith("upocr-eval: error: ") and "\n" not in code
  assert "missing.py" in code
  code = program(["upocr-eval", "--config=tiny", "--dataset=synthetic"],
                 eval_cli.run_main)
  assert code == "upocr-eval: error: --checkpoint is required"
  code = program(["p"], lambda: runpy.run_module(
      "upocr_jax.inference.predictor", run_name="__main__"))
  assert "upocr-predict" in code


def test_console_script_help():
  # One real process, as the installed upocr-eval runs it.
  proc = _run(["-c", "import sys; sys.argv = ['upocr-eval', '--help']; "
               "from upocr_jax.evaluation.cli import run_main; "
               "run_main()"], cwd="/")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("upocr-eval") and "  --dataset:" in proc.stdout
  assert "Try --helpfull" not in proc.stdout


def test_config_by_name_outside_the_repo(tmp_path):
  proc = _run(["-m", "input_pipeline.preview", "--config=tiny",
               "--out=grid.png", "--per_task=1", "--cell=16",
               "--config.data.image_size=32"], cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert (tmp_path / "grid.png").is_file()
