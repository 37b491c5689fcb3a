"""experiments/benchmark.py runs the real train step end to end and writes its report."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / 'experiments' / 'benchmark.py'


def _load_benchmark():
  sys.path.insert(0, str(SCRIPT.parent))  # as `python experiments/benchmark.py` has it
  spec = importlib.util.spec_from_file_location('kdjax_experiments_benchmark', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_benchmark_writes_json_and_table(tmp_path):
  out = tmp_path / 'bench.json'
  _load_benchmark().main([
      '--teacher', 'resnet8', '--student', 'resnet8', '--batch', '16', '--num_classes', '10',
      '--num_train', '64', '--methods', 'kd', '--warmup', '0', '--steps', '1',
      '--matmul_size', '256', '--out', str(out)])
  result = json.loads(out.read_text())
  for key in ('device', 'jax_version', 'date', 'git_commit', 'command', 'inputs', 'peak_flops',
              'memory_kind', 'methods', 'models'):
    assert key in result, key
  assert result['peak_flops']['float32'] > 0
  [row] = result['methods']
  assert row['method'] == 'kd' and row['batch'] == 16
  for key in ('compile_s', 'first_call_s', 'step_s', 'images_per_s', 'flops_per_step',
              'tflops_per_s', 'mfu', 'peak_memory_bytes'):
    assert row[key] > 0, key
  assert row['vs_kd'] == 1.0
  table = out.with_suffix('.md').read_text()
  assert '| kd |' in table
