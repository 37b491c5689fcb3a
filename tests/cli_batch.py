"""Runs many ``python -m kdjax.main`` command lines for the tests at the cost of one JAX
import: this process imports everything the CLI imports, without starting a JAX backend,
then forks once per command line; each child sets its environment (e.g. XLA_FLAGS, read
when the backend starts) and runs the CLI's own ``app.run(main, _parse_flags)``.

stdin: JSON list of {"argv": [...], "env": {...}, "module": "kdjax.main" (default) or
"kdjax.convert"}; stdout: JSON list of {"returncode", "stdout", "stderr"} in the same order.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import traceback


def _child(argv: list[str], env: dict[str, str], out: str, err: str, module: str) -> None:
  for fd, path in ((1, out), (2, err)):
    f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(f, fd)
    os.close(f)
  code = 0
  try:
    os.environ.update(env)
    from absl import app

    sys.argv = [module, *argv]
    if module == 'kdjax.convert':
      from kdjax import convert
      app.run(convert.main, flags_parser=convert.parse_flags)
    else:
      from kdjax import main as cli
      app.run(cli.main, flags_parser=cli._parse_flags)
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # as the interpreter would: traceback, exit 1
    traceback.print_exc()
    code = 1
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


def main() -> None:
  cases = json.load(sys.stdin)
  # everything main() imports lazily, so that the children start warm
  for module in ('kdjax.config', 'kdjax.main', 'kdjax.convert', 'kdjax.train.modes'):
    importlib.import_module(module)
  results = []
  with tempfile.TemporaryDirectory() as tmp:
    out, err = os.path.join(tmp, 'out'), os.path.join(tmp, 'err')
    for case in cases:
      pid = os.fork()
      if pid == 0:
        _child(case['argv'], case.get('env', {}), out, err, case.get('module', 'kdjax.main'))
      _, status = os.waitpid(pid, 0)
      with open(out) as f_out, open(err) as f_err:
        results.append({'returncode': os.waitstatus_to_exitcode(status),
                        'stdout': f_out.read(), 'stderr': f_err.read()})
  json.dump(results, sys.stdout)


if __name__ == '__main__':
  main()
