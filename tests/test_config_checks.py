"""config_checks (one check of a whole config), tasks (one source of the task
names) and the package's import rules (no cycles, no hidden imports, configs
never imported by the library)."""

import ast
import os

import pytest

from configs import upocr as upocr_config
from input_pipeline import schema
from input_pipeline.layout import BatchLayout, per_shard_batch_sizes
from upocr_jax import config_checks
from upocr_jax import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY = ("upocr_jax", "input_pipeline")


def test_paper_and_tiny_configs_pass_and_give_the_derived_values():
  paper = config_checks.check_config(_paper(), num_devices=8)
  assert paper == config_checks.CheckedConfig(num_data_shards=8,
                                              schedule_steps=80_000)
  tiny = upocr_config.get_config("tiny")
  assert config_checks.check_config(tiny).num_data_shards is None
  tiny.optim.total_steps = 1000
  assert config_checks.check_config(tiny).schedule_steps == 1000


def _paper():
  c = upocr_config.get_config("paper")
  c.loss.vgg_weights = "vgg16.pth"  # Only checked to be set here.
  return c


@pytest.mark.parametrize("edit,field", [
    (lambda c: setattr(c.model, "tasks", tuple(reversed(tasks.TASKS))),
     "config.model.tasks"),
    (lambda c: setattr(c.model, "dtype", "float64"), "config.model.dtype"),
    (lambda c: setattr(c.loss, "vgg_weights", None), "config.loss.vgg_weights"),
    (lambda c: setattr(c.loss, "seg_scale_weights", (1.0,)),
     "config.loss.seg_scale_weights"),
    (lambda c: setattr(c.optim, "steps_per_epoch", 0),
     "config.optim.steps_per_epoch"),
    (lambda c: setattr(c.optim, "warmup_steps", 90_000),
     "config.optim.warmup_steps"),
    (lambda c: setattr(c.data, "image_size", 500), "config.data.image_size"),
    (lambda c: setattr(c.data, "image_dtype", "float16"),
     "config.data.image_dtype"),
    (lambda c: setattr(c.data.text_segmentation, "source", "s3"),
     "config.data.text_segmentation.source"),
    (lambda c: setattr(c.data.text_removal, "batch_size", 12),
     "config.data.text_removal.batch_size"),
    (lambda c: setattr(c.train, "log_every", 0), "config.train.log_every"),
    (lambda c: setattr(c.train, "eval_every", -1), "config.train.eval_every"),
    (lambda c: setattr(c.evals, "datasets", ("imagenet",)),
     "config.evals.datasets"),
    (lambda c: setattr(c.evals, "seg_threshold", 2.0),
     "config.evals.seg_threshold"),
    (lambda c: setattr(c.mesh, "shape", (-1, -1, 1)), "config.mesh.shape"),
    (lambda c: setattr(c.mesh, "shape", (3, 1, 1)), "config.mesh.shape"),
    (lambda c: setattr(c.sharding, "batch_axes", ("data", "pipeline")),
     "config.sharding.batch_axes"),
    (lambda c: setattr(c.sharding, "rules", (("embed", "model"),)),
     "config.sharding.rules"),
])
def test_every_section_is_checked_and_the_error_names_the_field(edit, field):
  config = _paper()
  edit(config)
  with pytest.raises(ValueError) as e:
    config_checks.check_config(config, num_devices=8)
  assert field in str(e.value), e.value


def test_batch_split_names_the_mesh():
  config = _paper()
  config.mesh.shape = (1, 8, 1)
  config.data.text_removal.batch_size = 4
  with pytest.raises(ValueError, match=r"config\.data\.text_removal\.batch_size"
                     r" \(4\) is not divisible by the data-parallel size 8"):
    config_checks.check_config(config, num_devices=8)
  config.sharding.batch_axes = ("data",)  # fsdp no longer splits the batch
  assert config_checks.check_config(config, 8).num_data_shards == 1


def test_tasks_are_spelled_once():
  assert tasks.TASK_KEYS == ("text_removal", "tampered_text_detection",
                             "text_segmentation")
  assert [tasks.TASKS[i] for i in (tasks.TEXT_REMOVAL, tasks.TAMPERED,
                                   tasks.SEGMENTATION)] == list(tasks.TASKS)
  # The pipeline's schema, the configs and the evaluation use these objects.
  assert schema.TASKS is tasks.TASKS and schema.TASK_KEYS is tasks.TASK_KEYS
  config = upocr_config.get_config("paper")
  assert tuple(config.model.tasks) == tasks.TASKS
  assert config.evals.seg_threshold == tasks.SEG_THRESHOLD
  assert set(config.loss.task_weights) == set(tasks.TASK_KEYS)
  assert tasks.EVAL_DATASETS["textseg"] == ("text segmentation",)
  assert tasks.EVAL_DATASETS["synthetic"] == tasks.TASKS
  for name in ("Text_Removal", " text-removal ", "text removal"):
    assert tasks.canonical_task(name) == "text removal"
  with pytest.raises(ValueError, match="unknown task 'ocr'"):
    tasks.canonical_task("ocr")


def test_layout_from_the_data_config():
  data = upocr_config.get_config("tiny").data
  data.text_removal.batch_size = 6
  data.tampered_text_detection.batch_size = data.text_segmentation.batch_size = 3
  assert per_shard_batch_sizes(data, 3) == [2, 1, 1]
  lay = BatchLayout.from_data_config(data, 3)
  assert lay.task_ids == (0, 0, 1, 2) * 3 and lay.batch_size == 12
  with pytest.raises(ValueError, match="text_removal.batch_size=6"):
    per_shard_batch_sizes(data, 4)


def _modules():
  """{dotted module name: (path, parsed tree)} of the library packages."""
  out = {}
  for pkg in LIBRARY + ("configs",):
    for dirpath, _, files in os.walk(os.path.join(REPO, pkg)):
      for f in sorted(files):
        if f.endswith(".py"):
          path = os.path.join(dirpath, f)
          name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
          name = name[:-len(".__init__")] if name.endswith(".__init__") else name
          with open(path) as fh:
            out[name] = (path, ast.parse(fh.read()))
  return out


def _our_imports(tree, modules):
  """(imported module, at module level?) of each import of our packages."""
  top = set(map(id, tree.body))
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      names = [f"{node.module}.{a.name}"
               if f"{node.module}.{a.name}" in modules else node.module
               for a in node.names]
    else:
      continue
    for n in names:
      if n.split(".")[0] in LIBRARY + ("configs",):
        yield n, id(node) in top


PIPELINE_COMMANDS = ("input_pipeline.preview", "input_pipeline.write_synthetic",
                     "input_pipeline.sources.tfds_builders")


def test_import_rules():
  modules = _modules()
  graph, problems = {}, []
  for name, (_, tree) in modules.items():
    deps = set()
    for dep, at_top in _our_imports(tree, modules):
      if not at_top:
        problems.append(f"{name}: function-level import of {dep}")
      if name.startswith(LIBRARY) and dep.startswith("configs"):
        problems.append(f"{name}: the library imports {dep}")
      # The pipeline needs only the task names; its command-line tools also
      # share the entry points' flag handling.
      allowed = {"upocr_jax.tasks"} | (
          {"upocr_jax.cli_flags"} if name in PIPELINE_COMMANDS else set())
      if (name.startswith("input_pipeline") and dep.startswith("upocr_jax")
          and dep not in allowed):
        problems.append(f"{name}: the pipeline imports {dep}")
      while dep not in modules and "." in dep:
        dep = dep.rsplit(".", 1)[0]
      if dep != name:
        deps.add(dep)
    graph[name] = deps
  state = {}

  def visit(m, stack):
    state[m] = "open"
    for d in sorted(graph.get(m, ())):
      if state.get(d) == "open":
        problems.append("cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
      elif d not in state:
        visit(d, stack + [d])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not problems, "\n".join(problems)


def test_library_files_stay_short():
  long = [f"{path}: {sum(1 for _ in open(path))} lines"
          for path, _ in _modules().values()
          if sum(1 for _ in open(path)) > 450]
  assert not long, long
