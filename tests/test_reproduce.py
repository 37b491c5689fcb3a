"""experiments/reproduce.py: table plans, the --budget arithmetic, the report, and a
tiny end-to-end reproduction through the real CLI."""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest
from absl import flags
from ml_collections import config_flags

SCRIPT = Path(__file__).resolve().parents[1] / 'experiments' / 'reproduce.py'


@pytest.fixture(scope='module')
def reproduce():
  sys.path.insert(0, str(SCRIPT.parent))  # as `python experiments/reproduce.py` has it
  spec = importlib.util.spec_from_file_location('kdjax_experiments_reproduce', SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _args(reproduce, *argv):
  return reproduce.parse_args(['--teachers', '/nowhere', *argv])


@pytest.mark.parametrize('table', ['repdistiller', 'cid', 'icd', 'resnet56_resnet20'])
def test_every_cell_of_every_table_has_a_config(reproduce, table):
  cells = reproduce.plan(_args(reproduce, '--table', table, '--seeds', '2'), None)
  rows, pairs, _ = reproduce.TABLES[table]
  assert len(cells) == 2 * len(rows) * len(pairs)
  assert len({c.workdir for c in cells}) == len(cells)
  for c in cells:
    assert c.command[1:3] == ['-m', 'kdjax.main']
    assert f'--config.seed={c.seed}' in c.command


def test_published_numbers_come_from_the_configs(reproduce):
  r = reproduce
  pair = 'resnet56-resnet20'
  # methods.md section 1 / RepDistiller's README
  assert r.published(r.STUDENT, pair) == 69.06
  assert r.published(r.KD, pair) == 70.66
  assert r.published(r.CRD, pair) == 71.16
  assert r.published(r.CID, pair) is None  # the spec gives no CID number
  # methods.md §4: CRD+KD (CRD paper), ICD and ICD+KD (distillers README), with sources
  assert r.published(r.CRD_KD, pair) == 71.63
  assert r.published(r.ICD, pair) == 71.18 and r.published(r.ICD_KD, pair) == 71.81
  assert r.published(r.ICD_KD, 'wrn_40_2-ShuffleV1') == 76.51
  assert 'CRD paper' in r.published_source(r.CRD_KD, pair)
  assert '2f95cea' in r.published_source(r.ICD, pair)
  assert r.published_source(r.CID, pair) is None
  # every cell of the repdistiller and icd tables has a published number
  for table in ('repdistiller', 'icd'):
    rows, pairs, _ = r.TABLES[table]
    assert all(r.published(row, p) is not None for row in rows for p in pairs), table


def test_budget_parsing_and_scaling(reproduce):
  r = reproduce
  assert r.parse_budget('') is None
  assert r.parse_budget('8') == (8, 0)
  assert r.parse_budget('8:10000') == (8, 10000)
  for bad in ('x', '0', '8:-1', '8:ten'):
    with pytest.raises(SystemExit, match='--budget'):
      r.parse_budget(bad)
  # 150/180/210 of 240 epochs, at 8 epochs: 5, 6, 7; at 5: fractions stay distinct
  assert r.scale_epochs((150, 180, 210), 8) == (5.0, 6.0, 7.0)
  assert r.scale_epochs((150, 180, 210), 5) == (3.125, 3.75, 4.375)
  assert r.scale_epochs(20, 8) == 1 and r.scale_epochs(20, 120) == 10
  assert r.scale_epochs(0, 8) == 0


@pytest.mark.parametrize('arg', ['cid.py:resnet56-resnet20', 'kd.py:resnet56-resnet20'])
def test_budget_overrides_are_accepted_by_the_cli_parser(reproduce, arg):
  path = os.path.join(reproduce.CONFIGS, arg.split(':')[0])
  config = reproduce.load_config_module(path).get_config(arg.split(':')[1])
  extra = reproduce.budget_overrides(config, (8, 1000))
  argv = ['prog', f'--config={os.path.join(reproduce.CONFIGS, arg)}', *extra]
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
  fv(argv)
  parsed = fv.config
  assert parsed.train.epochs == 8 and parsed.data.train_examples == 1000
  assert tuple(parsed.optim.milestones) == (5.0, 6.0, 7.0)
  if parsed.method.name == 'cid':
    assert parsed.method.cid.init_epochs == 1
  else:
    assert not any('cid' in f for f in extra)
  assert reproduce.budget_overrides(config, None) == []


def _fake_run(workdir: Path, accuracies: list[float]) -> None:
  (workdir / 'model').mkdir(parents=True)
  (workdir / 'model' / 'kdjax_model.json').write_text('{}')
  lines = [json.dumps({'step': e, 'epoch': e, 'train/loss': 1.0, 'test/accuracy/student': a})
           for e, a in enumerate(accuracies, 1)]
  (workdir / 'metrics.jsonl').write_text('\n'.join(lines) + '\n')


def test_summary_is_mean_and_std_over_finished_seeds(reproduce, tmp_path):
  args = _args(reproduce, '--table', 'resnet56_resnet20', '--rows', 'KD', '--seeds', '3',
               '--runs', str(tmp_path))
  cells = reproduce.plan(args, (2, 0))
  _fake_run(Path(cells[0].workdir), [0.5, 0.70])
  _fake_run(Path(cells[1].workdir), [0.6, 0.72])
  # the third seed never finished: it must not count
  [s] = reproduce.summarize(cells)
  assert s['seeds'] == 2 and s['published'] == 70.66
  assert s['last_mean'] == pytest.approx(71.0)
  assert s['last_std'] == pytest.approx(2 ** 0.5)  # sample std of 70, 72
  assert s['best_mean'] == pytest.approx(71.0)
  assert s['difference'] == pytest.approx(71.0 - 70.66)
  info = {'command': 'c', 'git_commit': 'g', 'devices': 'd', 'date': 't'}
  md = reproduce.markdown('resnet56_resnet20', [s], info, (2, 0))
  assert 'REDUCED BUDGET (2 epochs' in md and 'NOT comparable' in md
  assert '| resnet56-resnet20 | KD | 2 | 71.00 ± 1.41 | 71.00 ± 1.41 | 70.66 | +0.34 |' in md


def test_bad_arguments_are_one_line_errors(reproduce, capsys):
  with pytest.raises(SystemExit):
    _args(reproduce, '--table', 'cid', '--pairs', 'resnet8-resnet8')
  assert "--pairs ['resnet8-resnet8'] not in table cid" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    _args(reproduce, '--table', 'nope')
  assert "invalid choice: 'nope'" in capsys.readouterr().err
  cells = reproduce.plan(_args(reproduce, '--table', 'resnet56_resnet20', '--rows', 'KD'), None)
  with pytest.raises(SystemExit, match='no teacher resnet56 in --teachers'):
    reproduce.check_teachers(cells, '/nowhere')


TINY_CONFIG = '''
from kdjax.config import base_config

PUBLISHED = {{'resnet8': 30.0, 'resnet8-resnet8': 40.0}}


def get_config(arg='resnet8-resnet8'):
  c = base_config()
  c.mode = {mode!r}
  c.method.name = {method!r}
  c.data.name = c.data.source = 'fake'
  c.data.fake_examples, c.data.fake_classes, c.data.crop_padding = 256, 4, 2
  c.model.name = 'resnet8'
  c.optim.schedule = 'cosine'
  c.train.batch_size, c.train.eval_batch_size = 32, 64
  c.train.epochs = 240
  return c
'''


@pytest.mark.slow  # two CLI trainings: ~40 s alone, ~100 s on a loaded 2-core machine
def test_tiny_reproduction_end_to_end_and_resumes(reproduce, fake_teacher, tmp_path, monkeypatch):
  configs = tmp_path / 'configs'
  configs.mkdir()
  (configs / 'teacher.py').write_text(TINY_CONFIG.format(mode='train', method='ce'))
  (configs / 'kd.py').write_text(TINY_CONFIG.format(mode='distill', method='kd'))
  teachers = tmp_path / 'teachers'
  teachers.mkdir()
  os.symlink(fake_teacher, teachers / 'resnet8')
  monkeypatch.setattr(reproduce, 'CONFIGS', str(configs))
  monkeypatch.setitem(reproduce.TABLES, 'tiny', (
      (reproduce.STUDENT, reproduce.KD), ('resnet8-resnet8',), 'a test table'))
  argv = ['--table', 'tiny', '--teachers', str(teachers), '--seeds', '1', '--budget', '2:128',
          '--runs', str(tmp_path / 'runs'), '--results', str(tmp_path / 'results')]
  summary = reproduce.main(argv)
  assert [s['row'] for s in summary] == ['student (CE)', 'KD']
  for s in summary:
    assert s['seeds'] == 1 and len(s['curves'][0]) == 2  # 2 epochs of the budget
    assert 0.0 <= s['last_mean'] <= 100.0
  assert [s['published'] for s in summary] == [30.0, 40.0]
  md = (tmp_path / 'results' / 'tiny_budget-2ep-128ex.md').read_text()
  assert 'REDUCED BUDGET' in md and '| resnet8-resnet8 | KD | 1 |' in md
  assert (tmp_path / 'results' / 'tiny_budget-2ep-128ex_curves.png').stat().st_size > 0
  report = json.loads((tmp_path / 'results' / 'tiny_budget-2ep-128ex.json').read_text())
  assert report['budget'] == [2, 128] and report['git_commit'] and report['devices']
  # the same command again trains nothing: every run is finished
  real_run = reproduce.subprocess.run

  def no_training(cmd, *a, **k):
    assert 'kdjax.main' not in cmd, 'a finished run was started again'
    return real_run(cmd, *a, **k)
  monkeypatch.setattr(reproduce.subprocess, 'run', no_training)
  again = reproduce.main(argv)
  assert [s['last_mean'] for s in again] == [s['last_mean'] for s in summary]
