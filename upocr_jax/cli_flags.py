"""The command-line style shared by every entry point (absl flags).

* :func:`DEFINE_config`: the ``--config`` flag. It takes a bundled config by
  name from any directory (``--config=tiny``, ``--config=upocr:tiny``,
  ``--config=upocr.py:tiny``, ``--config=configs/upocr.py:tiny`` all name the
  installed ``configs/upocr.py`` with variant ``tiny``; a bare word that is no
  bundled config file is a variant of ``upocr.py``) or a file of the user's own
  (``--config=my_config.py[:ARG]``, any path that exists). Fields are overridden
  with ``--config.a.b=value`` as in ml_collections. A missing file or an unknown
  variant is one error line naming it.
* :func:`parse`: defines an entry point's flags on a fresh ``FlagValues`` and
  parses ``argv`` (program name first), for tests and notebooks.
* :func:`run`: runs an entry point as a program. ``--help`` prints its usage
  text (with an example) and its OWN flags, one line each, instead of absl's
  list of every module's flags (that stays behind ``--helpfull``); flag errors
  and expected user errors print one line instead of a traceback.
* :func:`check_writable_dir`: a command's output folder checked before any
  compute, so an unwritable output is one line naming the path, not a
  traceback after the whole run.

Flag names use underscores (``--output_dir``, ``--batch_size``); booleans are
``--flag`` / ``--noflag``.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import sys
import tempfile
from typing import Any, Callable, Sequence

from absl import app, flags, logging
import ml_collections
from ml_collections.config_flags import config_flags

import upocr_jax
from upocr_jax.fit import targets

# configs/ is installed beside upocr_jax/ (setup.py packages both), and sits
# beside it in a checkout; found by path so the library never imports configs.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(
    upocr_jax.__file__)))
BUNDLED_CONFIG_DIR = os.path.join(_PACKAGE_ROOT, "configs")
# Log records from files under these are ours; any other is a library's.
OWN_SOURCE_DIRS = tuple(os.path.join(_PACKAGE_ROOT, d) + os.sep for d in
                        ("upocr_jax", "input_pipeline", "configs",
                         "benchmarks"))
DEFAULT_CONFIG_FILE = "upocr.py"  # What a bare variant name refers to.
_HELP_ARGS = ("--help", "-help", "--helpshort", "-helpshort", "-?", "-h")
CONFIG_HELP = "tiny, paper, upocr:tiny (bundled) or FILE.py[:ARG]"


class UsageError(ValueError):
  """A wrong or missing flag found after parsing (e.g. a required one)."""


def bundled_configs() -> list[str]:
  """Names of the config files shipped in ``configs/`` (without .py)."""
  if not os.path.isdir(BUNDLED_CONFIG_DIR):
    return []
  names = []
  for f in sorted(os.listdir(BUNDLED_CONFIG_DIR)):
    if f.endswith(".py") and not f.startswith("_"):
      with open(os.path.join(BUNDLED_CONFIG_DIR, f), encoding="utf-8") as fh:
        # Sections such as data_config.py are helpers, not configs.
        if "\ndef get_config(" in fh.read():
          names.append(f[:-3])
  return names


def resolve_config(spec: str) -> tuple[str, str | None]:
  """(config file path, get_config argument or None) named by ``spec``.

  See the module docstring for the accepted forms.

  Raises:
    ValueError: one line naming the missing file and the bundled configs.
  """
  path, sep, arg = spec.partition(":")
  arg = arg if sep else None
  if not path:
    raise ValueError(f"no config file named in {spec!r}")
  if os.path.isfile(path):
    return path, arg
  name = os.path.basename(path)
  # Only a bare name or the repository's own spelling configs/NAME.py falls
  # back to the bundled file; any other path is the user's and must exist.
  if os.path.dirname(path) in ("", "configs"):
    bundled = os.path.join(BUNDLED_CONFIG_DIR,
                           name if name.endswith(".py") else name + ".py")
    if os.path.isfile(bundled) and not name.startswith("_"):
      return bundled, arg
    if not sep and os.path.dirname(path) == "" and not name.endswith(".py"):
      # --config=tiny: a variant of the default config.
      return os.path.join(BUNDLED_CONFIG_DIR, DEFAULT_CONFIG_FILE), path
  raise ValueError(
      f"no config file {path!r} (bundled configs: "
      + ", ".join(bundled_configs()) + "; or a variant of "
      f"{DEFAULT_CONFIG_FILE}, e.g. --config=tiny)")


def load_config(spec: str, lock: bool = True) -> Any:
  """The config named by ``spec`` (see :func:`resolve_config`), ``get_config``
  called with its argument; locked when ``lock``.

  Raises:
    ValueError: one line naming a missing file, a file without get_config, or
      what get_config rejected (e.g. an unknown variant).
  """
  path, arg = resolve_config(spec)
  name = "_upocr_config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(module_spec)
  # Registered so that dataclasses and pickling inside the config resolve.
  sys.modules[name] = module
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"{path} has no get_config()")
  try:
    config = module.get_config() if arg is None else module.get_config(arg)
  except TypeError as e:
    raise ValueError(f"{path}: get_config: {e}") from e
  if lock and isinstance(config, ml_collections.ConfigDict):
    config.lock()
  return config


class _ConfigParser(config_flags.ConfigFileFlagParser):
  """ml_collections' config file parser with :func:`load_config`'s lookup."""

  def parse(self, path: str) -> Any:
    return load_config(path, self._lock_config)


def DEFINE_config(  # pylint: disable=invalid-name
    fv: flags.FlagValues, argv: Sequence[str] | None = None,
    default: str | None = None, help_string: str = "",
    name: str = "config") -> flags.FlagHolder:
  """Defines the ``--config`` flag (with ``--config.a.b=`` overrides) on ``fv``.

  Args:
    fv: where the flag is defined.
    argv: the command line the overrides are looked up in (None: sys.argv,
      as for a program; tests pass the argv they parse).
    default: config spec used when the flag is not given (None: no config).
    help_string: what the entry point uses the config for; the accepted forms
      are appended.
    name: the flag name.
  """
  helps = (f"{help_string}: {CONFIG_HELP}" if help_string
           else f"Config: {CONFIG_HELP}")
  # What config_flags.DEFINE_config_file builds, with our parser; its
  # override machinery (--config.a.b=) is reused unchanged.
  flag = config_flags._ConfigFlag(  # pylint: disable=protected-access
      parser=_ConfigParser(name=name, lock_config=True),
      serializer=flags.ArgumentSerializer(), name=name, default=default,
      help_string=helps + ".", flag_values=fv, accept_new_attributes=False,
      sys_argv=None if argv is None else list(argv))
  return flags.DEFINE_flag(flag, fv)


def DEFINE_compile_only(  # pylint: disable=invalid-name
    fv: flags.FlagValues, compile_help: str, suggest_help: str) -> None:
  """Defines ``--compile_only``, ``--topology`` and ``--suggest`` on ``fv``
  (the compile-only fit reports of ``upocr_jax.fit``); ``compile_help`` and
  ``suggest_help`` say what the entry point compiles and tries."""
  flags.DEFINE_bool("compile_only", False, compile_help, flag_values=fv)
  flags.DEFINE_string("topology", "", "With --compile_only: a TPU slice to "
                      "compile for, e.g. v5e:2x2 (needs libtpu, no TPU), or "
                      "a GPU: h100 (one H100 SXM 80 GB; needs "
                      "jax[cuda12] at the jax version, no GPU); empty: the "
                      "local devices.", flag_values=fv)
  flags.DEFINE_bool("suggest", False, "With --compile_only: " + suggest_help,
                    flag_values=fv)


def compile_only_topology(fv: flags.FlagValues) -> str | None:
  """The checked ``--topology`` of a ``--compile_only`` run ('' for the
  local devices), or None without ``--compile_only``.

  Raises:
    UsageError: an unknown topology (listing the known ones), or
      ``--topology`` / ``--suggest`` without ``--compile_only``.
  """
  if not fv.compile_only:
    if fv.topology or fv.suggest:
      raise UsageError("--topology and --suggest need --compile_only")
    return None
  if fv.topology:
    try:
      targets.check_topology(fv.topology)
    except ValueError as e:
      raise UsageError(str(e)) from e
  return fv.topology


def require(fv: flags.FlagValues, *names: str) -> None:
  """Raises UsageError ('--NAME is required') for the first unset flag."""
  for n in names:
    if fv[n].value is None or fv[n].value == "":
      raise UsageError(f"--{n} is required")


def parse(define_flags: Callable[..., None], argv: Sequence[str]
          ) -> tuple[flags.FlagValues, list[str]]:
  """Defines ``define_flags(fv, argv)`` on a fresh FlagValues, parses argv.

  Returns the parsed flags and the remaining arguments (program name first).
  Raises absl's flags.Error for a bad flag (or config field).
  """
  fv = flags.FlagValues()
  define_flags(fv, list(argv))
  return fv, _parse_argv(fv, list(argv))


def _parse_argv(fv: flags.FlagValues, argv: list[str]) -> list[str]:
  try:
    return fv(argv)
  except (AttributeError, KeyError) as e:
    # What ml_collections raises for --config.FIELD naming no field.
    raise flags.IllegalFlagValueError(
        f"a --config.FIELD override names no field of the config: {e}"
    ) from e


def _flag_line(flag: flags.Flag) -> str:
  name = f"--[no]{flag.name}" if flag.boolean else f"--{flag.name}"
  text = " ".join(flag.help.split())
  # default_as_str is the quoted command-line spelling ('8', 'true', and a
  # config flag's spec rather than the whole config).
  default = (flag.default_as_str or "").strip("'")
  if flag.default is not None and default:
    text += f" (default: {default})"
  return f"  {name}: {text}"


def help_text(usage: str, fv: flags.FlagValues, names: Sequence[str]) -> str:
  """``usage`` then one line per flag in ``names`` (definition order)."""
  lines = [usage.strip("\n").rstrip(), "", "flags:"]
  lines += [_flag_line(fv[n]) for n in names]
  if "config" in names:
    lines += ["", "Any config field is set with --config.FIELD=VALUE, e.g. "
              "--config.data.image_size=128."]
  lines += ["", "Flag names use underscores; --helpfull also lists absl's "
            "own flags (logging: verbosity=0 adds the libraries' INFO logs)."]
  return "\n".join(lines) + "\n"


def entry_help(usage: str, define_flags: Callable[..., None]) -> str:
  """The ``--help`` text of an entry point (for tests and docs)."""
  fv = flags.FlagValues()
  define_flags(fv, [sys.argv[0]])
  return help_text(usage, fv, [n for n in fv if "." not in n])


class _LibraryInfoFilter(std_logging.Filter):
  """Passes warnings and errors, and INFO/DEBUG records of our own files."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return (record.levelno >= std_logging.WARNING
            or os.path.abspath(record.pathname).startswith(OWN_SOURCE_DIRS))


_LIBRARY_INFO_FILTER = _LibraryInfoFilter()


def quiet_library_logging() -> None:
  """Our INFO lines print; the libraries' only from WARNING up.

  orbax, grain, tensorflow_datasets and jax all log through absl's handler
  (absl's logger or Python's root logger), so one filter on that handler sorts
  their records from ours by the file that logged them.
  """
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_LIBRARY_INFO_FILTER)


def run(prog: str, usage: str, define_flags: Callable[..., None],
        main: Callable[[list[str], flags.FlagValues], object], *,
        user_errors: tuple[type[BaseException], ...] = (ValueError,
                                                        FileNotFoundError),
        quiet_logging: bool = True) -> None:
  """Runs ``main(argv, flags.FLAGS)`` as the absl program ``prog``.

  Args:
    prog: the command name, used in error lines.
    usage: what --help prints before the flags (usage and an example).
    define_flags: ``define_flags(fv, argv)`` defines the program's flags.
    main: called with the remaining arguments (program name first) and the
      parsed flags.
    user_errors: exceptions printed as one line ``PROG: error: ...`` instead
      of a traceback (flag errors and UsageError always are).
    quiet_logging: the libraries' INFO logs (orbax's chatter) are hidden,
      ours kept (:func:`quiet_library_logging`), unless --verbosity is given
      (e.g. --verbosity=0: everyone's INFO).
  """
  before = set(flags.FLAGS)
  define_flags(flags.FLAGS)
  # Not the --config.a.b overrides a default config defines from sys.argv.
  own = [n for n in flags.FLAGS if n not in before and "." not in n]
  errors = (flags.Error, UsageError) + tuple(user_errors)

  def parse_flags(argv: list[str]) -> list[str]:
    args = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if any(a in _HELP_ARGS for a in args):
      sys.stdout.write(help_text(usage, flags.FLAGS, own))
      sys.exit(0)
    try:
      return _parse_argv(flags.FLAGS, argv)
    except flags.Error as e:
      sys.exit(f"{prog}: error: {e}")

  def app_main(argv: list[str]) -> None:
    if quiet_logging and not flags.FLAGS["verbosity"].present:
      quiet_library_logging()
    try:
      main(argv, flags.FLAGS)
    except errors as e:
      sys.exit(f"{prog}: error: {e}")

  app.run(app_main, flags_parser=parse_flags)


def check_writable_dir(path: str, hint: str) -> None:
  """Creates folder ``path`` if needed and checks a file can be written in it.

  Args:
    path: the output folder.
    hint: what to do instead, ending the error line ("choose another
      --output_dir").
  Raises:
    ValueError: one line naming ``path``, what is wrong and ``hint``.
  """
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"output folder {path} exists and is not a folder; {hint}")
  try:
    os.makedirs(path, exist_ok=True)
    # A real write: os.access ignores read-only mounts and ACLs in places,
    # and says yes to root for chmod-protected folders that root can write.
    with tempfile.NamedTemporaryFile(dir=path, prefix=".upocr_write_check_"):
      pass
  except OSError as e:
    raise ValueError(f"output folder {path}: cannot write there "
                     f"({e.strerror or e}); {hint}") from e
