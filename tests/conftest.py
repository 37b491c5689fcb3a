"""Shared test helpers.

The reference fixtures live in ``../shared/fixtures`` (next to the checkout; override
with ``KDJAX_SHARED``). CI always has them; a user's clone may not, and then the tests
that need them are skipped with that reason.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get('KDJAX_SHARED', Path(__file__).resolve().parents[2] / 'shared'))
FIXTURES = SHARED / 'fixtures'


def load_fixture(name: str) -> tuple[dict[str, np.ndarray], dict]:
  """Returns (arrays, json metadata) of ``../shared/fixtures/NAME``, or skips."""
  npz = FIXTURES / f'{name}.npz'
  if not npz.exists():
    pytest.skip(f'reference fixture {npz} not found (needs the ../shared checkout; '
                'set KDJAX_SHARED to its path)')
  with np.load(npz) as data:
    arrays = {k: data[k] for k in data.files}
  meta = json.loads((FIXTURES / f'{name}.json').read_text())
  return arrays, meta


def torch_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rebuilds a model fixture's exact torch state dict (see the fixtures README)."""
  sd = {k[len('param/'):]: v for k, v in arrays.items() if k.startswith('param/')}
  for k, v in arrays.items():
    if k.startswith('q/'):
      key = k[len('q/'):]
      sd[key] = v.astype(np.float32) * arrays['scale/' + key]
  return sd


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
  return np.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x
