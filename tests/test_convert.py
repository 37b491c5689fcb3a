"""The user's import path for PyTorch teachers: .pth -> `python -m kdjax.convert` -> export."""
from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import load_fixture, nchw_to_nhwc, torch_state_dict
from kdjax.models import create_model
from kdjax.train import export

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _convert(*args):
  return subprocess.run([sys.executable, '-m', 'kdjax.convert', *args], capture_output=True,
                        text=True, cwd=REPO, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))


def test_pth_converts_to_an_export_with_reference_logits(tmp_path):
  torch = pytest.importorskip('torch', reason="reading .pth needs the optional extra kdjax[torch]")
  arrays, _ = load_fixture('rd_resnet8')
  sd = {k: torch.from_numpy(np.asarray(v)) for k, v in torch_state_dict(arrays).items()}
  torch.save({'model': sd}, tmp_path / 'resnet8.pth')  # RepDistiller's nesting
  result = _convert('--torch_checkpoint', str(tmp_path / 'resnet8.pth'), '--model', 'resnet8',
                    '--num_classes', '100', '--out', str(tmp_path / 'export'))
  assert result.returncode == 0, result.stderr
  meta, variables = export.load(str(tmp_path / 'export'))
  assert meta['model'] == 'resnet8' and meta['mean'] == [0.5071, 0.4867, 0.4408]
  logits, _ = create_model('resnet8', 100).apply(
      {'params': variables['params'], 'batch_stats': variables['batch_stats']},
      jnp.asarray(nchw_to_nhwc(arrays['x'])))
  np.testing.assert_allclose(logits, arrays['logits'], atol=1e-5)


def test_convert_reports_bad_input_in_one_line(tmp_path):
  result = _convert('--torch_checkpoint', str(tmp_path / 'none.pth'), '--model', 'resnet8',
                    '--out', str(tmp_path / 'e'))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f"kdjax: error: --torch_checkpoint {tmp_path / 'none.pth'} does not exist")
  result = _convert('--torch_checkpoint', __file__, '--model', 'resnet9', '--out', str(tmp_path))
  assert 'unknown model' in result.stderr and 'Traceback' not in result.stderr


def test_normalization_of_the_teachers_own_training_and_overwrite(tmp_path):
  """--normalization=chenyaofo records the constants the shared CIFAR-100 teachers were
  trained with (../shared/teachers/README.md); replacing an export needs --overwrite."""
  torch = pytest.importorskip('torch', reason="reading .pth needs the optional extra kdjax[torch]")
  arrays, _ = load_fixture('rd_resnet8')
  sd = {k: torch.from_numpy(np.asarray(v)) for k, v in torch_state_dict(arrays).items()}
  torch.save(sd, tmp_path / 'resnet8.pth')
  args = ['--torch_checkpoint', str(tmp_path / 'resnet8.pth'), '--model', 'resnet8',
          '--num_classes', '100', '--out', str(tmp_path / 'export')]
  result = _convert(*args, '--normalization=chenyaofo')
  assert result.returncode == 0, result.stderr
  meta = export.read_meta(str(tmp_path / 'export'))
  assert meta['mean'] == [0.5070, 0.4865, 0.4409] and meta['std'] == [0.2673, 0.2564, 0.2762]
  assert meta['normalization'] == 'chenyaofo'
  result = _convert(*args, '--overwrite')
  assert result.returncode == 0, result.stderr
  meta = export.read_meta(str(tmp_path / 'export'))
  assert meta['mean'] == [0.5071, 0.4867, 0.4408] and meta['normalization'] == 'kd'
  assert sorted(os.listdir(tmp_path)) == ['export', 'resnet8.pth']
