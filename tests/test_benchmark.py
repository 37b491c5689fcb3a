"""experiments/benchmark.py runs the real train step end to end and writes its report."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

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
      '--matmul_size', '256', '--steps_per_call', '2', '--epochs', '3', '--num_test', '40',
      '--eval_batch', '16', '--out', str(out)])
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
  # timed per call of 2 scanned steps, reported per step
  assert result['steps_per_call'] == row['steps_per_call'] == 2
  # the whole-run projection: 64 / 16 = 4 steps and ceil(40 / 16) = 3 test batches an epoch
  p = result['projection']
  assert p['method'] == 'kd' and p['steps_per_call'] == 2 and p['epochs'] == 3
  assert (p['steps_per_epoch'], p['eval_batches']) == (4, 3)
  assert 0 < p['busy_fraction'] <= 1 and p['step_s'] > 0 and p['eval_batch_s'] > 0
  assert p['run_s'] == pytest.approx(3 * (4 * p['step_s'] + 3 * p['eval_batch_s']))
  table = out.with_suffix('.md').read_text()
  assert '| kd |' in table and 'A whole run: 3 epochs' in table


def test_benchmark_reference_torch_and_variants(tmp_path):
  """--reference torch times the same rows in PyTorch alongside; --variants adds KD rows."""
  import pytest
  pytest.importorskip('torch', reason='the PyTorch reference is an optional extra')
  out = tmp_path / 'bench.json'
  _load_benchmark().main([
      '--teacher', 'resnet8', '--student', 'resnet8', '--batch', '8', '--num_classes', '10',
      '--num_train', '32', '--methods', 'kd,icd', '--variants', 'xla,fold', '--warmup', '0',
      '--steps', '1', '--matmul_size', '128', '--models', 'resnet8', '--batch_sizes', '8',
      '--reference', 'torch', '--whole_epoch', '--out', str(out)])
  result = json.loads(out.read_text())
  assert [(r['method'], r['variant']) for r in result['methods']] == [
      ('kd', 'xla'), ('kd', 'fold'), ('icd', 'xla')]
  for r in result['methods']:
    assert r['torch']['step_s'] > 0 and r['cpu_s'] > 0
    assert r['vs_torch'] == r['torch']['step_s'] / r['step_s']
  [model] = result['models']
  for key in ('forward', 'forward_backward'):
    assert model[key]['torch']['step_s'] > 0 and model[key]['vs_torch'] > 0
  assert 'torch' not in model['train']  # the reference has no full-step model row
  assert result['reference']['framework'] == 'torch'
  assert result['reference']['device'] == 'cpu'  # 'auto' on a CPU-only JAX
  # --whole_epoch: 32 / 8 = 4 steps timed both ways
  p = result['projection']
  assert p['epoch_train_s'] > 0 and p['torch_epoch_train_s'] > 0
  table = out.with_suffix('.md').read_text()
  assert '| kd | fold |' in table and 'kdjax/PyTorch' in table


def test_torch_reference_loader_feed_trains_a_step():
  """--reference_feed loader: the official recipes' DataLoader path (CPU augmentation)."""
  torch = pytest.importorskip('torch', reason='the PyTorch reference is an optional extra')
  sys.path.insert(0, str(SCRIPT.parent))
  import torch_reference as ref
  feed = ref.LoaderFeed(num_train=24, num_classes=10, batch=8, workers=0)
  x, y, idx = feed()
  assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
  assert y.shape == idx.shape == (8,) and bool((idx >= 0).all() and (idx < 24).all())
  # labels travel with their examples; normalised pixels stay in the range of [0, 255]
  assert torch.equal(y, ref.synthetic_set(24, 10)[1][idx])
  low = (0 - max(ref.MEAN)) / min(ref.STD)
  high = (1 - min(ref.MEAN)) / min(ref.STD)
  assert float(x.min()) >= low - 1e-5 and float(x.max()) <= high + 1e-5
  step = ref.build_step('crd', 'resnet8', 'resnet8', 10, feed, {'beta': 0.8}, 'cpu')
  losses = [step(None).item() for _ in range(4)]  # one epoch and the start of the next
  assert all(np.isfinite(losses))
