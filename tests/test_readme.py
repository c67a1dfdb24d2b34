"""The README: short, two set-up commands that CI runs, paths and snippets that work."""

import ast
import importlib
import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    return f.read()


def _snippets() -> list[str]:
  return re.findall(r"```python\n(.*?)```", _readme(), re.S)


def test_readme_is_short_with_two_setup_commands_the_second_run_by_ci():
  text = _readme()
  assert len(text.splitlines()) <= 300
  setup = [line.strip() for line in text.splitlines()
           if line.strip().startswith("python3 -m venv")]
  assert len(setup) == 2, setup
  assert "upocr-train" in setup[0] and "pytest" in setup[1]
  with open(os.path.join(REPO, ".ci", "run"), encoding="utf-8") as f:
    ci = f.read()
  test_command = setup[1].split("&& ", 2)[2]  # after venv + activate
  assert test_command in ci, (test_command, ci)


def test_every_path_the_readme_names_exists():
  text = _readme()
  paths = set(re.findall(r"\]\(([^)#:]+)\)", text))  # markdown links
  paths |= set(re.findall(r"`((?:docs|configs|benchmarks|tests|upocr_jax|"
                          r"input_pipeline)/[\w./-]+)`", text))
  assert paths, "no paths found"
  missing = [p for p in sorted(paths)
             if not os.path.exists(os.path.join(REPO, p.split(":")[0]))]
  assert not missing, missing


def test_readme_python_snippets_import_and_the_model_one_runs(capsys):
  snippets = _snippets()
  assert len(snippets) >= 2
  for code in snippets:
    for node in ast.walk(ast.parse(code)):
      if isinstance(node, ast.ImportFrom):
        mod = importlib.import_module(node.module)
        for alias in node.names:
          assert hasattr(mod, alias.name) or importlib.util.find_spec(
              f"{node.module}.{alias.name}"), f"{node.module}.{alias.name}"
      elif isinstance(node, ast.Import):
        for alias in node.names:
          importlib.import_module(alias.name)
  model_snippet = next(s for s in snippets if "UPOCR(" in s)
  exec(compile(model_snippet, "README.md", "exec"), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out
  assert "(2, 16, 24, 3) (2, 32, 48, 3) (2, 64, 96, 3)" in printed, printed
