"""Up-front checks that a command's outputs can be written.

Commands call these before any compute, so an unwritable output (a path under a
regular file, a read-only folder or file system) is one line naming the path,
not a traceback after the whole run.
"""

from __future__ import annotations

import os
import tempfile


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
