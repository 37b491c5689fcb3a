"""What the experiment scripts share: loading config files by path and the provenance
(command, commit, devices, date) written next to every result."""
from __future__ import annotations

import datetime
import importlib.util
import os
import shlex
import subprocess
import sys
from types import ModuleType
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config_module(path: str) -> ModuleType:
  """A config file as a module (ml_collections loads them by path, so does this)."""
  name = 'kdjax_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def git_commit() -> str:
  """The checkout's short commit, with '+dirty' when it has uncommitted changes."""
  try:
    rev = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return rev + ('+dirty' if dirty else '')
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def provenance(script: str, argv: list[str]) -> dict[str, Any]:
  """Command, commit, devices, JAX version and date of this run."""
  import jax
  devices = jax.devices()
  return {'command': shlex.join(['python', script] + list(argv)),
          'git_commit': git_commit(),
          'devices': f'{len(devices)} x {devices[0].device_kind} ({devices[0].platform})',
          'jax_version': jax.__version__,
          'python': sys.version.split()[0],
          'date': datetime.datetime.now().isoformat(timespec='seconds')}


def write_result(out: str, result: dict[str, Any], markdown: str) -> None:
  """``result`` as JSON at ``out`` and ``markdown`` next to it (``.md``), printed too."""
  import json
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  with open(os.path.splitext(out)[0] + '.md', 'w') as f:
    f.write(markdown)
  print(markdown)
