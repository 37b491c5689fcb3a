"""Reproduces a published table: runs its configs over several seeds, resumes where it
stopped, and writes ``results/<table>.md`` (mean and std per cell next to the published
number), ``.json`` and a PNG of the test-accuracy curves.

  python experiments/reproduce.py --table resnet56_resnet20 --teachers runs/teachers \\
      --data_path ../shared/data/cifar100/cifar-100-python.tar.gz --seeds 3
  python experiments/reproduce.py --table repdistiller --pairs resnet56-resnet20 --dry_run
  python experiments/reproduce.py --table resnet56_resnet20 --budget 8:10000 ...   # CPU

Each run is ``python -m kdjax.main`` in ``--runs/<table>/<budget>/<pair>/<row>/seed<k>``;
a finished run (its ``model/`` export exists) is not run again and an interrupted one
resumes from its checkpoint, so the same command continues a stopped reproduction.
``--teachers DIR`` holds one teacher per model name: ``DIR/resnet56`` is an export
(``python -m kdjax.convert ...``) or a workdir of ``configs/teacher.py:resnet56``.

``--budget EPOCHS[:EXAMPLES]`` shortens the protocol for machines without an
accelerator: EPOCHS epochs (the lr milestones and CID's warm-up scale with them) on a
fixed random EXAMPLES of the training set. Its results are labelled REDUCED BUDGET and
are not comparable with the published numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import shlex
import subprocess
import sys
from typing import Any, NamedTuple

from common import ROOT, load_config_module, provenance
from kdjax import cifar_tables
from kdjax import datafree_tables as DF

CONFIGS = os.path.join(ROOT, 'configs')
PROTOCOL_EPOCHS = 240
# config keys counted in epochs, rescaled by --budget (at least 1 where they are > 0)
EPOCH_KEYS = ('optim.milestones', 'method.cid.init_epochs', 'datafree.warmup')


class Row(NamedTuple):
  """One method row of a table: its config file and the suffix added to the pair."""
  name: str
  config: str
  suffix: str = ''

  def arg(self, pair: str) -> str:
    return pair + self.suffix


STUDENT = Row('student (CE)', 'teacher')  # arg is the student model name, see spec()
KD, FITNET, AT = Row('KD', 'kd'), Row('FitNet', 'fitnet'), Row('AT', 'at')
CRD, CRD_KD = Row('CRD', 'crd'), Row('CRD+KD', 'crd', '+kd')
CID, ICD, ICD_KD = Row('CID', 'cid'), Row('ICD', 'icd'), Row('ICD+KD', 'icd', '+kd')
# data-free rows (methods.md §5) and their KDCI twins (§6)
DATAFREE = tuple(Row(name + suffix.upper(), f'datafree/{cfg}', suffix)
                 for name, cfg in (('DAFL', 'dafl'), ('DeepInv', 'deepinv'), ('CMI', 'cmi'),
                                   ('Fast', 'fast')) for suffix in ('', '+kdci'))
CID_PAIRS = ('wrn_40_2-wrn_16_2', 'resnet56-resnet20', 'wrn_40_4-wrn_16_2',
             'ResNet50-MobileNetV2', 'ResNet50-vgg8')

# table name: (rows, pairs, description)
TABLES: dict[str, tuple[tuple[Row, ...], tuple[str, ...], str]] = {
    'repdistiller': ((STUDENT, KD, FITNET, AT, CRD, CRD_KD), cifar_tables.PAIRS,
                     'RepDistiller / CRD tables 1-2: baselines on the 13 CIFAR-100 pairs'),
    'cid': ((STUDENT, CID), CID_PAIRS, 'CID CIFAR-100 rows (methods.md section 3)'),
    'icd': ((STUDENT, KD, CRD, ICD, ICD_KD), cifar_tables.PAIRS,
            'ICD CIFAR-100 tables (methods.md section 4)'),
    'resnet56_resnet20': ((STUDENT, KD, CRD, CID, ICD, ICD_KD), ('resnet56-resnet20',),
                          'resnet56 -> resnet20: the column shared by the CRD, CID and ICD '
                          'tables'),
    'datafree_cifar100': (DATAFREE, tuple(a for a in DF.TABLE_ARGS if a.startswith('cifar100')),
                          'data-free CIFAR-100 (methods.md section 5), each method with and '
                          'without KDCI (section 6)'),
    'datafree_cifar10': (DATAFREE, tuple(a for a in DF.TABLE_ARGS if a.startswith('cifar10-')),
                         'data-free CIFAR-10 (methods.md section 5), each method with and '
                         'without KDCI (section 6)'),
    'datafree_digits': (DATAFREE, ('digits-resnet20-resnet8',),
                        'data-free on the built-in digits (a kdjax-trained resnet20 teacher '
                        '-> resnet8), each method with and without KDCI'),
    'datafree_resnet56_resnet20': (DATAFREE, ('cifar100-resnet56-resnet20',),
                                   'data-free CIFAR-100 from the converted resnet56 of '
                                   '../shared/teachers -> resnet20, each method with and '
                                   'without KDCI'),
}


def spec(row: Row, pair: str) -> tuple[str, str]:
  """(config file, its argument) of one cell."""
  if row is STUDENT:
    return os.path.join(CONFIGS, 'teacher.py'), pair.split('-')[1]
  return os.path.join(CONFIGS, f'{row.config}.py'), row.arg(pair)


def published(row: Row, pair: str) -> float | None:
  path, arg = spec(row, pair)
  return load_config_module(path).PUBLISHED.get(arg)


def published_source(row: Row, pair: str) -> str | None:
  """Where the cell's published number comes from (the config's ``SOURCE``: one string,
  or one per argument), None without a number."""
  path, arg = spec(row, pair)
  module = load_config_module(path)
  if module.PUBLISHED.get(arg) is None:
    return None
  source = getattr(module, 'SOURCE', None)
  return source.get(arg) if isinstance(source, dict) else source


def parse_budget(text: str) -> tuple[int, int] | None:
  """'EPOCHS[:EXAMPLES]' -> (epochs, examples; 0 = all), '' -> None (full protocol)."""
  if not text:
    return None
  try:
    epochs, _, examples = text.partition(':')
    budget = int(epochs), int(examples or 0)
  except ValueError:
    raise SystemExit(f'reproduce: error: --budget {text!r} must be EPOCHS or EPOCHS:EXAMPLES, '
                     'e.g. 8:10000') from None
  if budget[0] <= 0 or budget[1] < 0:
    raise SystemExit(f'reproduce: error: --budget {text!r} needs EPOCHS > 0 and EXAMPLES >= 0')
  return budget


def scale_epochs(value: Any, epochs: int) -> Any:
  """Protocol epochs at a budget of ``epochs``: milestones (a tuple) become fractional
  epochs, so that they stay distinct; a whole count (CID's warm-up) stays whole, >= 1."""
  if isinstance(value, (tuple, list)):
    return tuple(round(v * epochs / PROTOCOL_EPOCHS, 3) for v in value)
  return max(1, round(value * epochs / PROTOCOL_EPOCHS)) if value > 0 else value


def budget_overrides(config, budget: tuple[int, int] | None) -> list[str]:
  """The ``--config.*`` flags that apply ``budget`` to ``config`` (a ConfigDict)."""
  if budget is None:
    return []
  epochs, examples = budget
  flags = [f'--config.train.epochs={epochs}']
  if examples:
    flags.append(f'--config.data.train_examples={examples}')
  for key in EPOCH_KEYS:
    node = config
    *groups, name = key.split('.')
    try:
      for g in groups:
        node = node[g]
      value = node[name]
    except KeyError:
      continue
    if key.split('.')[1] == 'cid' and config.method.name != 'cid':
      continue
    scaled = scale_epochs(value, epochs)
    flags.append(f'--config.{key}={scaled!r}'.replace(' ', ''))
  return flags


def budget_tag(budget: tuple[int, int] | None) -> str:
  if budget is None:
    return 'full'
  return f'budget-{budget[0]}ep' + (f'-{budget[1]}ex' if budget[1] else '')


class Cell(NamedTuple):
  row: Row
  pair: str
  seed: int
  workdir: str
  command: list[str]
  teacher: str = ''   # the teacher model the cell distils from ('' for the student row)


def plan(args: argparse.Namespace, budget: tuple[int, int] | None) -> list[Cell]:
  rows, pairs, _ = TABLES[args.table]
  rows = [r for r in rows if not args.rows or r.name in args.rows.split(',')]
  pairs = [p for p in pairs if not args.pairs or p in args.pairs.split(',')]
  cells = []
  for pair in pairs:
    for row in rows:
      path, arg = spec(row, pair)
      config = load_config_module(path).get_config(arg)
      # the config's teacher model, else the pair's first name (TEACHER-STUDENT)
      teacher = (config.teacher.model or pair.split('-')[0]
                 if config.mode in ('distill', 'datafree') else '')
      for seed in range(args.seeds):
        workdir = os.path.join(args.runs, args.table, budget_tag(budget), pair,
                               row.name.split()[0], f'seed{seed}')
        cmd = [sys.executable, '-m', 'kdjax.main', f'--config={path}:{arg}',
               f'--workdir={workdir}', f'--config.seed={seed}', '--config.train.progress=False']
        if teacher:
          cmd.append(f'--config.teacher.checkpoint={os.path.join(args.teachers, teacher)}')
        if args.data_path:
          cmd += ['--config.data.source=archive', f'--config.data.path={args.data_path}']
        cmd += budget_overrides(config, budget) + [f'--config.{o}' for o in args.override]
        cells.append(Cell(row, pair, seed, workdir, cmd, teacher))
  return cells


def check_teachers(cells: list[Cell], teachers: str) -> None:
  """Fails before any training when a teacher the table needs is missing."""
  from kdjax.train import export
  needed = sorted({c.teacher for c in cells if c.teacher})
  missing = [t for t in needed if not os.path.exists(os.path.join(teachers, t))]
  if missing:
    raise SystemExit(
        f'reproduce: error: no teacher {", ".join(missing)} in --teachers {teachers!r}; put an '
        'export there (python -m kdjax.convert --torch_checkpoint T.pth --model NAME '
        '--num_classes 100 --out DIR/NAME) or a workdir of configs/teacher.py:NAME')
  for t in needed:
    try:
      export.check_exported(os.path.join(teachers, t), t)
    except export.ExportError as e:
      raise SystemExit(f'reproduce: error: teacher {t}: {e}') from None


def finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, 'model', 'kdjax_model.json'))


def curve(workdir: str) -> list[tuple[int, float]]:
  """(epoch, headline test accuracy %) of a run; the headline is the first accuracy the
  method reports (CID: the interventional head). A resumed epoch keeps its last record."""
  from kdjax.train.metrics import read_metrics
  by_epoch = {}
  for r in read_metrics(workdir):
    acc = next((v for k, v in r.items() if k.startswith('test/accuracy/')), None)
    if 'epoch' in r and acc is not None:
      by_epoch[int(r['epoch'])] = 100 * acc
  return sorted(by_epoch.items())


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
  if not values:
    return None, None
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(cells: list[Cell]) -> list[dict[str, Any]]:
  """One entry per (pair, row): last/best accuracy mean and std over the finished seeds."""
  out = []
  keys = list(dict.fromkeys((c.pair, c.row) for c in cells))
  for pair, row in keys:
    runs = [c for c in cells if (c.pair, c.row) == (pair, row) and finished(c.workdir)]
    curves = [curve(c.workdir) for c in runs]
    last = [cv[-1][1] for cv in curves if cv]
    best = [max(a for _, a in cv) for cv in curves if cv]
    pub = published(row, pair)
    (lm, ls), (bm, bs) = _mean_std(last), _mean_std(best)
    out.append({'pair': pair, 'row': row.name, 'seeds': len(last), 'last_mean': lm,
                'last_std': ls, 'best_mean': bm, 'best_std': bs, 'published': pub,
                'published_source': published_source(row, pair),
                'difference': None if lm is None or pub is None else lm - pub,
                'last_per_seed': last, 'curves': curves,
                'workdirs': [c.workdir for c in runs]})
  by_cell = {(s['pair'], s['row']): s for s in out}
  for s in out:   # KDCI rows: the gain over the same method without it
    base = by_cell.get((s['pair'], s['row'].removesuffix('+KDCI')))
    if s['row'].endswith('+KDCI') and base and None not in (s['last_mean'], base['last_mean']):
      s['kdci_gain'] = s['last_mean'] - base['last_mean']
  return out


def _fmt(mean: float | None, std: float | None, seeds: int) -> str:
  if mean is None:
    return '-'
  return f'{mean:.2f}' if seeds == 1 else f'{mean:.2f} ± {std:.2f}'


def markdown(table: str, summary: list[dict[str, Any]], info: dict[str, Any],
             budget: tuple[int, int] | None) -> str:
  kdci = any(r.name.endswith('+KDCI') for r in TABLES[table][0])
  lines = [f'# kdjax reproduction: {table}', '', TABLES[table][2] + '.', '']
  if budget is not None:
    lines += [f'**REDUCED BUDGET ({budget[0]} epochs'
              + (f' on {budget[1]} training examples' if budget[1] else '')
              + f' instead of {PROTOCOL_EPOCHS} on the full set): NOT comparable with the '
              'published numbers.** The published column is the full protocol\'s.', '']
  lines += [f"- command: `{info['command']}`", f"- commit: {info['git_commit']}",
            f"- devices: {info['devices']}", f"- date: {info['date']}",
            '- accuracy: top-1 % on the test set, LAST epoch (the protocol\'s number) and best '
            'epoch, mean ± std over seeds (no std for one seed); CID reports its interventional '
            'head, +KDCI rows their adjusted (de-confounded) head.', '',
            '| pair | method | seeds | last | best | published | last - published |'
            + (' +KDCI - without (last) |' if kdci else ''),
            '|---|---|---|---|---|---|---|' + ('---|' if kdci else '')]
  for s in summary:
    pub = '-' if s['published'] is None else f"{s['published']:.2f}"
    diff = '-' if s['difference'] is None else f"{s['difference']:+.2f}"
    gain = f" {s['kdci_gain']:+.2f} |" if 'kdci_gain' in s else ' - |'
    lines.append(f"| {s['pair']} | {s['row']} | {s['seeds']} | "
                 f"{_fmt(s['last_mean'], s['last_std'], s['seeds'])} | "
                 f"{_fmt(s['best_mean'], s['best_std'], s['seeds'])}"
                 f" | {pub} | {diff} |" + (gain if kdci else ''))
  sources = list(dict.fromkeys(s['published_source'] for s in summary if s['published_source']))
  lines += ['', 'Published: "-" where methods.md records no number for the cell. Sources:']
  lines += [f"- {', '.join(sorted({s['row'] for s in summary if s['published_source'] == src}))}: "
            f'{src}' for src in sources]
  lines += ['']
  return '\n'.join(lines)


def plot(summary: list[dict[str, Any]], path: str, title: str) -> None:
  """Test accuracy per epoch, one panel per pair, one line (mean over seeds) per row."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  import numpy as np
  pairs = list(dict.fromkeys(s['pair'] for s in summary))
  cols = min(3, len(pairs))
  fig, axes = plt.subplots(math.ceil(len(pairs) / cols), cols, squeeze=False,
                           figsize=(5.5 * cols, 4 * math.ceil(len(pairs) / cols)))
  for ax, pair in zip(axes.flat, pairs):
    for s in (s for s in summary if s['pair'] == pair and s['curves']):
      n = min(len(c) for c in s['curves'])
      epochs = [e for e, _ in s['curves'][0][:n]]
      acc = np.mean([[a for _, a in c[:n]] for c in s['curves']], axis=0)
      ax.plot(epochs, acc, label=f"{s['row']} ({s['seeds']} seeds)")
    ax.set(title=pair, xlabel='epoch', ylabel='test top-1 %')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  for ax in list(axes.flat)[len(pairs):]:
    ax.axis('off')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--table', required=True, choices=sorted(TABLES))
  p.add_argument('--teachers', default='runs/teachers',
                 help='directory with one teacher export or workdir per model name')
  p.add_argument('--data_path', default='',
                 help='CIFAR-100 archive or extracted folder (default: tfds)')
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--budget', default='', help='EPOCHS[:EXAMPLES], see above; default: full')
  p.add_argument('--pairs', default='', help='comma list: only these columns')
  p.add_argument('--rows', default='', help="comma list of row names, e.g. 'KD,CRD+KD'")
  p.add_argument('--override', action='append', default=[],
                 help='extra config override KEY=VALUE for every run (repeatable)')
  p.add_argument('--runs', default='runs/reproduce', help='where the workdirs go')
  p.add_argument('--results', default=os.path.join(ROOT, 'results'))
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  p.add_argument('--report_only', action='store_true',
                 help='write the report from the runs that exist, train nothing')
  args = p.parse_args(argv)
  rows = {r.name for r in TABLES[args.table][0]}
  unknown = set(filter(None, args.rows.split(','))) - rows
  if unknown:
    p.error(f'--rows {sorted(unknown)} not in table {args.table}: {sorted(rows)}')
  pairs = set(TABLES[args.table][1])
  unknown = set(filter(None, args.pairs.split(','))) - pairs
  if unknown:
    p.error(f'--pairs {sorted(unknown)} not in table {args.table}: {sorted(pairs)}')
  if args.seeds < 1:
    p.error('--seeds must be >= 1')
  # the runs are started from the repository root: paths must not depend on the cwd
  for key in ('teachers', 'data_path', 'runs', 'results'):
    if getattr(args, key):
      setattr(args, key, os.path.abspath(getattr(args, key)))
  return args


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  budget = parse_budget(args.budget)
  cells = plan(args, budget)
  if args.dry_run:
    for c in cells:
      print(shlex.join(['python'] + c.command[1:]))
    return []
  if not args.report_only:
    check_teachers(cells, args.teachers)
  for i, c in enumerate(cells):
    if args.report_only or finished(c.workdir):
      continue
    print(f'reproduce: [{i + 1}/{len(cells)}] {c.pair} {c.row.name} seed {c.seed} -> {c.workdir}',
          flush=True)
    result = subprocess.run(c.command, cwd=ROOT)
    if result.returncode != 0:
      raise SystemExit(f'reproduce: error: run failed (exit {result.returncode}); fix it and run '
                       f'the same command again to continue: {" ".join(c.command[1:])}')
  summary = summarize(cells)
  name = args.table + ('' if budget is None else '_' + budget_tag(budget))
  os.makedirs(args.results, exist_ok=True)
  stem = os.path.join(args.results, name)
  info = provenance('experiments/reproduce.py', argv)
  plot(summary, stem + '_curves.png', f'{args.table} ({budget_tag(budget)})')
  with open(stem + '.md', 'w') as f:
    f.write(markdown(args.table, summary, info, budget)
            + f'\n![test accuracy per epoch]({os.path.basename(stem)}_curves.png)\n')
  with open(stem + '.json', 'w') as f:
    json.dump({**info, 'table': args.table, 'budget': budget, 'cells': summary}, f, indent=1)
  print(open(stem + '.md').read())
  return summary


if __name__ == '__main__':
  main()
