"""Speed, memory and FLOP utilisation of kdjax's real jitted train step.

  python experiments/benchmark.py                      # every method, resnet32x4 -> resnet8x4
  python experiments/benchmark.py --methods kd,crd --steps 20
  python experiments/benchmark.py --methods none --models resnet8x4,wrn_40_2 --batch_sizes 64,256

Each method row runs the step users run: ``build_train_step`` + ``build_train_chunk``
(one step per call) with the method's published weights (``configs/<method>.py``, else
the base config) and its real ``init``. The 'train' row is CE on labels without a
teacher (mode train). Inputs are BENCHMARK INPUTS, not a dataset: random uint8 images
and labels placed on the device(s); the teacher has random weights (its cost does not
depend on them). Per row: compile time (trace + lower + XLA compile of the executable
the first call would build), the first call, the median step over ``--steps`` calls
after ``--warmup`` (each blocked on), images/s, FLOPs of the compiled step from XLA's
cost analysis, model-FLOPs utilisation against the matmul peak measured in the same
run, and memory. Writes JSON (``--out``) and a markdown table next to it.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import shlex
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from common import ROOT, git_commit, load_config_module
from kdjax import methods
from kdjax.config import base_config
from kdjax.data import normalize
from kdjax.data.sources import known_normalization
from kdjax.models import create_model
from kdjax.train.loop import DTYPES, build_run, method_for
from kdjax.train.mesh import DATA_AXIS, make_mesh, replicate
from kdjax.train.state import TrainState
from kdjax.train.steps import DataSpec, build_train_chunk, build_train_step, forward

INPUTS = 'random uint8 images / int labels on device (benchmark input, not a dataset)'


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--teacher', default='resnet32x4')
  p.add_argument('--student', default='resnet8x4')
  p.add_argument('--batch', type=int, default=64, help='global batch of the method rows')
  p.add_argument('--num_classes', type=int, default=100)
  p.add_argument('--num_train', type=int, default=50000,
                 help='examples on device; sizes per-example memories (CRD) as CIFAR-100')
  p.add_argument('--methods', default='all',
                 help="comma list, 'all' (registered methods but ce, plus kd+kdci and train) "
                      "or 'none'; '<method>+kdci' wraps a method with KDCI")
  p.add_argument('--models', default='', help='comma list of models to time alone')
  p.add_argument('--batch_sizes', default='64', help='batches of the --models rows')
  p.add_argument('--dtype', default='float32', choices=sorted(DTYPES))
  p.add_argument('--image_size', type=int, default=32, help='input S (224 for ImageNet models)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--steps', type=int, default=20, help='timed calls; the median is reported')
  p.add_argument('--matmul_size', type=int, default=0, help='0: 2048 on CPU, 8192 else')
  p.add_argument('--out', default='', help='default results/benchmark_<platform>.json')
  return p.parse_args(argv)


def method_config(name: str, teacher: str, student: str, dtype: str) -> ml_collections.ConfigDict:
  """The published config of ``name`` (configs/<name>.py; its default pair's weights if it
  has none for ours), else the base config, with our models; 'train' = CE mode train;
  'kd+kdci' (any '<method>+kdci') = that method's config with method.kdci.enabled."""
  if name.endswith('+kdci'):
    c = method_config(name[:-len('+kdci')], teacher, student, dtype)
    c.method.kdci.enabled = True
    return c
  c = None
  path = os.path.join(ROOT, 'configs', f'{name}.py')
  if name != 'train' and os.path.exists(path):
    module = load_config_module(path)
    try:
      c = module.get_config(f'{teacher}-{student}')
    except ValueError:
      c = module.get_config()
  if c is None:
    c = base_config()
    c.mode, c.method.name = ('train', 'ce') if name == 'train' else ('distill', name)
  c.model.name, c.teacher.model, c.model.dtype = student, teacher, dtype
  return c


def build_case(config: ml_collections.ConfigDict, batch: int, num_classes: int,
               num_train: int, mesh, image_size: int = 32, train_labels: Any = None
               ) -> tuple[Callable, TrainState, Any]:
  """The jitted one-step chunk, its initial state and the teacher variables
  (``train_labels``: the (num_train,) labels, for CRD's other-class sampler)."""
  method, method_cfg = method_for(config)
  dtype = DTYPES[config.model.dtype]
  steps_per_epoch = max(num_train // batch, 1)
  teacher = create_model(config.teacher.model, num_classes, dtype) if method.needs_teacher else None
  teacher_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((2, image_size, image_size, 3)),
                              train=False) if teacher else {}
  # the same construction as training (student, method variables, optimizer, state)
  setup = build_run(config, num_classes, num_train, (image_size, image_size, 3), teacher,
                    teacher_vars, steps_per_epoch, train_labels=train_labels)
  student, tx, state = setup.student, setup.tx, setup.state
  mean, std = known_normalization('cifar100')
  data = DataSpec(mean, std, config.data.crop_padding, config.data.flip)
  step = build_train_step(student, teacher, method, method_cfg, tx, data, steps_per_epoch, mesh)
  return build_train_chunk(step, mesh, 1), replicate(state, mesh), replicate(teacher_vars, mesh)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def peak_memory() -> tuple[int, str]:
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use (device 0, process high-water)'
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          'process max RSS (getrusage ru_maxrss, host, process high-water)')


def measure(jitted, args: tuple, next_args: Callable, warmup: int, steps: int) -> dict[str, float]:
  """Compiles ``jitted`` for ``args``, then times calls; ``next_args(args, out, i)`` threads
  the state of one call into the next (the train state is donated)."""
  t = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  out = jax.block_until_ready(compiled(*args))
  first_s = time.perf_counter() - t
  times = []
  for i in range(warmup + steps):
    args = next_args(args, out, i)
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t)
  mem = compiled.memory_analysis()
  return {'compile_s': compile_s, 'first_call_s': first_s,
          'step_s': statistics.median(times[warmup:]), 'step_s_min': min(times[warmup:]),
          'flops_per_step': _flops(compiled),
          'xla_temp_bytes': int(getattr(mem, 'temp_size_in_bytes', 0) or 0),
          'peak_memory_bytes': peak_memory()[0]}


def peak_flops(dtype, n: int, reps: int = 5) -> float:
  """Measured FLOP/s of a jitted n x n matmul chain (float32 at JAX's default precision)."""
  k = 4
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = (jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32) / n ** 0.5).astype(dtype)
  chain = jax.jit(lambda a, b: jax.lax.fori_loop(0, k, lambda _, x: x @ b, a))
  jax.block_until_ready(chain(a, b))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(chain(a, b))
    times.append(time.perf_counter() - t)
  return 2 * k * n ** 3 / statistics.median(times)


def run_train(config, batch, args, mesh, images, labels) -> dict[str, float]:
  chunk, state, teacher_vars = build_case(config, batch, args.num_classes, args.num_train, mesh,
                                          args.image_size,
                                          np.asarray(jax.device_get(labels)))
  idx_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, DATA_AXIS))
  idx = [jax.device_put(jax.random.randint(jax.random.PRNGKey(i), (1, batch), 0, args.num_train),
                        idx_sharding) for i in range(args.warmup + args.steps + 1)]
  next_args = lambda a, out, i: (out[0], a[1], a[2], a[3], idx[i + 1])
  return measure(chunk, (state, teacher_vars, images, labels, idx[0]), next_args,
                 args.warmup, args.steps)


def run_forward(name, batch, args, mesh, images) -> dict[str, float]:
  model = create_model(name, args.num_classes, DTYPES[args.dtype])
  size = args.image_size
  variables = replicate(model.init(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)),
                                   train=False), mesh)
  mean, std = known_normalization('cifar100')
  fwd = jax.jit(lambda v, x: forward(model, v, normalize(x, mean, std)).logits)
  x = jax.device_put(images[:batch], jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS)))
  return measure(fwd, (variables, x), lambda a, out, i: a, args.warmup, args.steps)


def _derive(row: dict[str, Any], peak: float) -> dict[str, Any]:
  row['images_per_s'] = row['batch'] / row['step_s']
  row['tflops_per_s'] = row['flops_per_step'] / row['step_s'] / 1e12
  row['mfu'] = row['flops_per_step'] / row['step_s'] / peak
  return row


def markdown(result: dict[str, Any]) -> str:
  d, pk = result['device'], result['peak_flops']
  lines = [f"# kdjax benchmark: {d['description']}", '',
           f"jax {result['jax_version']}, {result['date']}, commit {result['git_commit']}; "
           f"inputs: {result['inputs']}; dtype {result['dtype']}.",
           "Measured peak: " + ', '.join(f'{k} {v / 1e12:.3f} TFLOP/s' for k, v in pk.items())
           + f"; MFU against {result['dtype']}. Memory: {result['memory_kind']}; XLA temp = "
           'scratch of the compiled step.', '', f"`{result['command']}`", '']
  if result['methods']:
    lines += [f"## Methods: {result['teacher']} -> {result['student']}, batch {result['batch']}", '',
              '| method | compile s | step ms | img/s | GFLOP/step | TFLOP/s | MFU % | vs KD '
              '| XLA temp MB | peak mem MB |', '|' + '---|' * 10]
    for r in result['methods']:
      vs = f"{r['vs_kd']:.2f}x" if r.get('vs_kd') else '-'
      lines.append(f"| {r['method']} | {r['compile_s']:.1f} | {1e3 * r['step_s']:.1f} | "
                   f"{r['images_per_s']:.0f} | {r['flops_per_step'] / 1e9:.1f} | "
                   f"{r['tflops_per_s']:.3f} | {100 * r['mfu']:.1f} | {vs} | "
                   f"{r['xla_temp_bytes'] / 2**20:.0f} | {r['peak_memory_bytes'] / 2**20:.0f} |")
    lines.append('')
  if result['models']:
    lines += ['## Models alone (forward = eval mode; train = CE step)', '',
              '| model | batch | fwd img/s | train img/s | train step ms | GFLOP/train step '
              '| train MFU % | compile s (fwd / train) |', '|' + '---|' * 8]
    for r in result['models']:
      f, t = r['forward'], r['train']
      lines.append(f"| {r['model']} | {r['batch']} | {f['images_per_s']:.0f} | "
                   f"{t['images_per_s']:.0f} | {1e3 * t['step_s']:.1f} | "
                   f"{t['flops_per_step'] / 1e9:.1f} | {100 * t['mfu']:.1f} | "
                   f"{f['compile_s']:.1f} / {t['compile_s']:.1f} |")
    lines.append('')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  mesh, devices = make_mesh(), jax.devices()
  platform = devices[0].platform
  _say = lambda msg: print(f'benchmark: {msg}', file=sys.stderr, flush=True)
  if args.methods == 'all':
    names = [m for m in methods.method_names() if m != 'ce'] + ['kd+kdci', 'train']
  else:
    names = [] if args.methods == 'none' else args.methods.split(',')
  n = args.matmul_size or (2048 if platform == 'cpu' else 8192)
  peak = {'float32': peak_flops(jnp.float32, n)}
  if platform != 'cpu':
    peak['bfloat16'] = peak_flops(jnp.bfloat16, n)
  _say('peak ' + ', '.join(f'{k} {v / 1e12:.3f} TFLOP/s' for k, v in peak.items()))
  pk = peak.get(args.dtype, peak['float32'])
  shape = (args.num_train, args.image_size, args.image_size, 3)
  images = replicate(jax.random.bits(jax.random.PRNGKey(0), shape, jnp.uint8), mesh)
  labels = replicate(jax.random.randint(jax.random.PRNGKey(1), (args.num_train,), 0,
                                        args.num_classes, jnp.int32), mesh)
  rows = []
  for name in names:
    config = method_config(name, args.teacher, args.student, args.dtype)
    row = {'method': name, 'batch': args.batch,
           **run_train(config, args.batch, args, mesh, images, labels)}
    rows.append(_derive(row, pk))
    _say(f"{name}: {1e3 * row['step_s']:.1f} ms/step, compile {row['compile_s']:.1f} s")
  kd = next((r['step_s'] for r in rows if r['method'] == 'kd'), None)
  for r in rows:
    r['vs_kd'] = r['step_s'] / kd if kd else None
  model_rows = []
  for name in filter(None, args.models.split(',')):
    for b in (int(s) for s in args.batch_sizes.split(',')):
      config = method_config('train', '', name, args.dtype)
      fwd = _derive({'batch': b, **run_forward(name, b, args, mesh, images)}, pk)
      trn = _derive({'batch': b, **run_train(config, b, args, mesh, images, labels)}, pk)
      model_rows.append({'model': name, 'batch': b, 'forward': fwd, 'train': trn})
      _say(f"{name} batch {b}: forward {fwd['images_per_s']:.0f} img/s, "
           f"train {trn['images_per_s']:.0f} img/s")
  result = {
      'device': {'platform': platform, 'kind': devices[0].device_kind, 'count': len(devices),
                 'description': f'{len(devices)} x {devices[0].device_kind} ({platform})'
                                + (f', {os.cpu_count()} host CPUs' if platform == 'cpu' else '')},
      'jax_version': jax.__version__, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
      'git_commit': git_commit(), 'command': shlex.join(['python', 'experiments/benchmark.py'] + argv),
      'inputs': f'{INPUTS}, {args.image_size}x{args.image_size}', 'teacher_weights': 'random init', 'dtype': args.dtype,
      'teacher': args.teacher, 'student': args.student, 'batch': args.batch,
      'num_classes': args.num_classes, 'num_train': args.num_train,
      'warmup': args.warmup, 'steps': args.steps, 'step_statistic': 'median',
      'flops_source': 'XLA cost_analysis of the compiled step (per device program)',
      'peak_flops': peak, 'peak_flops_source': f'median of jitted {n}x{n} matmul chains',
      'memory_kind': peak_memory()[1], 'methods': rows, 'models': model_rows}
  out = args.out or os.path.join(ROOT, 'results', f'benchmark_{platform}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(result, f, indent=1)
  table = markdown(result)
  with open(os.path.splitext(out)[0] + '.md', 'w') as f:
    f.write(table)
  print(table)
  return result


if __name__ == '__main__':
  main()
