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
import optax

from common import ROOT, git_commit, load_config_module
from kdjax import methods
from kdjax.config import base_config
from kdjax.data import normalize
from kdjax.data.sources import known_normalization
from kdjax.models import create_model
from kdjax.models import layers
from kdjax.models.fold import fold_batchnorm
from kdjax.train.assemble import Teacher, assemble, configured, labels_only
from kdjax.train.batches import steps_per_call
from kdjax.train.mesh import DATA_AXIS, make_mesh, replicate
from kdjax.train.state import TrainState
from kdjax.train.steps import DataSpec, build_train_chunk, forward

INPUTS = 'random uint8 images / int labels on device (benchmark input, not a dataset)'
PIPELINED_MIN_CALLS = 5  # calls of the projection's pipelined run
# kdjax variants of the KD step, each timed on its own row (see experiments/README.md)
VARIANTS = {
    'xla': 'as trained (XLA convolutions, teacher variables as loaded)',
    'fold': 'teacher BatchNorm folded into its convolutions (kdjax.models.fold)',
    'matmul_grad': "kernel gradients as shifted-window matmuls (layers.set_conv_impl('matmul_grad'))",
}


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
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--image_size', type=int, default=32, help='input S (224 for ImageNet models)')
  p.add_argument('--warmup', type=int, default=3)
  p.add_argument('--steps', type=int, default=20, help='timed calls; the median is reported')
  p.add_argument('--matmul_size', type=int, default=0, help='0: 2048 on CPU, 8192 else')
  p.add_argument('--out', default='', help='default results/benchmark_<platform>.json')
  p.add_argument('--reference', default='none', choices=('none', 'torch'),
                 help='time the same steps in PyTorch, interleaved call by call (torch extra)')
  p.add_argument('--steps_per_call', type=int, default=0,
                 help='train steps per jitted call (lax.scan); 0: what training uses on this '
                      'platform (1 on the CPU, 100 on accelerators)')
  p.add_argument('--epochs', type=int, default=240,
                 help='epochs of the projected run (the CIFAR-100 KD protocol)')
  p.add_argument('--num_test', type=int, default=10000, help='test images evaluated per epoch')
  p.add_argument('--eval_batch', type=int, default=256, help='train.eval_batch_size')
  p.add_argument('--reference_device', default='auto',
                 help="torch device of the reference: 'auto' (cuda when JAX runs on a GPU and "
                      "torch sees one, else cpu), cpu, cuda, cuda:N")
  p.add_argument('--reference_feed', default='device', choices=('device', 'loader'),
                 help="the reference's batches: 'device' (gathered and augmented on its device "
                      "inside the step, as kdjax does) or 'loader' (the official recipes' "
                      "DataLoader with CPU augmentation in worker processes)")
  p.add_argument('--loader_workers', type=int, default=4, help="workers of --reference_feed loader")
  p.add_argument('--whole_epoch', action='store_true',
                 help='also time one whole epoch of KD both ways (ceil(num_train / batch) steps)')
  p.add_argument('--variants', default='xla',
                 help=f"comma list of kdjax variants of the KD row: {', '.join(VARIANTS)}")
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
               num_train: int, mesh, image_size: int = 32, train_labels: Any = None,
               variant: str = 'xla', steps_per_call: int = 1) -> tuple[Callable, TrainState, Any]:
  """The jitted chunk of ``steps_per_call`` steps, its initial state and the teacher
  variables (``train_labels``: the (num_train,) labels, for CRD's other-class sampler)."""
  choice = labels_only(config) if config.mode == 'train' else configured(config)
  dtype = jnp.dtype(config.model.dtype)
  steps_per_epoch = max(num_train // batch, 1)
  teacher = None
  if choice[0].needs_teacher:
    model = create_model(config.teacher.model, num_classes, dtype)
    sample = jnp.zeros((2, image_size, image_size, 3))
    teacher_vars = model.init(jax.random.PRNGKey(1), sample, train=False)
    if variant == 'fold':
      teacher_vars = fold_batchnorm(model, teacher_vars, sample)
    teacher = Teacher(model, teacher_vars, {})
  mean, std = known_normalization('cifar100')
  # the same construction as training (student, method variables, optimizer, state, step)
  run = assemble(config, choice, num_classes=num_classes, num_train=num_train,
                 image_shape=(image_size, image_size, 3),
                 data=DataSpec(mean, std, config.data.crop_padding, config.data.flip),
                 steps_per_epoch=steps_per_epoch, teacher=teacher, train_labels=train_labels)
  step, state = run.train_step(mesh), run.state
  teacher_vars = teacher.variables if teacher else {}
  return (build_train_chunk(step, mesh, steps_per_call), replicate(state, mesh),
          replicate(teacher_vars, mesh))


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


def process_cpu_s() -> float:
  """User + system CPU seconds of this process (all threads) so far."""
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


class Timed:
  """One blocking call ``fn()`` timed repeatedly: wall and process CPU seconds per call.
  On a shared machine the wall time also counts the time the OS ran other processes;
  the CPU time does not (it does count threads spinning while they wait)."""

  def __init__(self, fn: Callable[[], Any], pipelined: Callable[[int], float] | None = None):
    # pipelined(calls): wall seconds of that many calls issued as training issues them
    self.fn, self.pipelined, self.wall, self.cpu = fn, pipelined, [], []

  def once(self, keep: bool) -> None:
    c, t = process_cpu_s(), time.perf_counter()
    self.fn()
    if keep:
      self.wall.append(time.perf_counter() - t)
      self.cpu.append(process_cpu_s() - c)

  def stats(self) -> dict[str, float]:
    return {'step_s': statistics.median(self.wall), 'step_s_min': min(self.wall),
            'cpu_s': statistics.median(self.cpu), 'calls': len(self.wall)}


def interleave(timed: list[Timed], warmup: int, steps: int) -> None:
  """Calls every ``Timed`` once per round, ``warmup`` untimed rounds then ``steps`` timed
  ones, so all of them see the same machine load (kdjax and PyTorch back to back)."""
  for i in range(warmup + steps):
    for t in timed:
      t.once(keep=i >= warmup)


def prepare(jitted, args: tuple, next_args: Callable) -> tuple[dict[str, float], Timed]:
  """Compiles ``jitted`` for ``args`` and makes the first call; returns its costs and a
  ``Timed`` that keeps calling it, ``next_args(args, out, i)`` threading the state of one
  call into the next (the train state is donated)."""
  t = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  holder = {'args': args, 'out': jax.block_until_ready(compiled(*args)), 'i': 0}
  first_s = time.perf_counter() - t

  def issue():
    holder['args'] = next_args(holder['args'], holder['out'], holder['i'])
    holder['out'] = compiled(*holder['args'])
    holder['i'] += 1
    return holder['out']

  def pipelined(calls: int) -> float:
    """Wall seconds of ``calls`` train calls issued as ``kdjax.train.loop.fit`` issues
    them: each call is dispatched before the previous call's metrics are read, and
    nothing else waits for the device."""
    t = time.perf_counter()
    pending = None
    for _ in range(calls):
      out = issue()
      if pending is not None:
        jax.device_get(pending)
      pending = out[1]
    jax.block_until_ready(holder['out'])
    return time.perf_counter() - t

  mem = compiled.memory_analysis()
  return ({'compile_s': compile_s, 'first_call_s': first_s, 'flops_per_step': _flops(compiled),
           'xla_temp_bytes': int(getattr(mem, 'temp_size_in_bytes', 0) or 0)},
          Timed(lambda: jax.block_until_ready(issue()), pipelined))


def finish(info: dict[str, float], timed: Timed) -> dict[str, float]:
  return {**info, **timed.stats(), 'peak_memory_bytes': peak_memory()[0]}


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


def prepare_train(config, batch, args, mesh, images, labels, variant: str = 'xla',
                  k: int = 1) -> tuple[dict[str, float], Timed]:
  """The train chunk of ``k`` steps (its ``Timed`` times whole calls)."""
  chunk, state, teacher_vars = build_case(config, batch, args.num_classes, args.num_train, mesh,
                                          args.image_size, np.asarray(jax.device_get(labels)),
                                          variant, k)
  idx_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, DATA_AXIS))
  calls = args.warmup + args.steps + max(args.steps, PIPELINED_MIN_CALLS) + 1
  idx = [jax.device_put(jax.random.randint(jax.random.PRNGKey(i), (k, batch), 0, args.num_train),
                        idx_sharding) for i in range(calls)]
  next_args = lambda a, out, i: (out[0], a[1], a[2], a[3], idx[(i + 1) % len(idx)])
  return prepare(chunk, (state, teacher_vars, images, labels, idx[0]), next_args)


def _model_inputs(name, batch, args, mesh, images):
  model = create_model(name, args.num_classes, jnp.dtype(args.dtype))
  size = args.image_size
  variables = replicate(model.init(jax.random.PRNGKey(0), jnp.zeros((2, size, size, 3)),
                                   train=False), mesh)
  mean, std = known_normalization('cifar100')
  x = jax.device_put(normalize(images[:batch], mean, std),
                     jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS)))
  return model, variables, x


def eval_batch_seconds(args: argparse.Namespace, mesh, images) -> float:
  """Median time of the student's eval-mode forward on one ``--eval_batch`` batch."""
  _, timed = prepare_forward(args.student, args.eval_batch, args, mesh, images)
  interleave([timed], args.warmup, args.steps)
  return timed.stats()['step_s']


def prepare_forward(name, batch, args, mesh, images) -> tuple[dict[str, float], Timed]:
  """Eval-mode forward of a fixed normalised batch."""
  model, variables, x = _model_inputs(name, batch, args, mesh, images)
  fwd = jax.jit(lambda v, x: forward(model, v, x).logits)
  return prepare(fwd, (variables, x), lambda a, out, i: a)


def prepare_forward_backward(name, batch, args, mesh, images, labels
                             ) -> tuple[dict[str, float], Timed]:
  """Train-mode forward + the CE gradient of every parameter (no optimizer update)."""
  model, variables, x = _model_inputs(name, batch, args, mesh, images)
  y = labels[:batch]

  def grads(v, x, y):
    def loss(params):
      logits, _ = model.apply({'params': params, 'batch_stats': v['batch_stats']}, x,
                              train=True, mutable=['batch_stats'])[0]
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))
    return jax.grad(loss)(v['params'])

  return prepare(jax.jit(grads), (variables, x, y), lambda a, out, i: a)


def torch_steps(reference: str, args):
  """The PyTorch reference module and its synthetic training set, or (None, None)."""
  if reference != 'torch':
    return None, None
  # libgomp's default active waiting makes torch's 2 threads ~100x slower when the cores
  # are oversubscribed (measured on a shared 2-core machine: resnet8 forward 800 ms
  # instead of 10); passive waiting has to be set before torch loads OpenMP
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  import torch
  import torch_reference  # optional extra: only imported when asked for
  if args.reference_device == 'auto':
    on_gpu = jax.devices()[0].platform == 'gpu' and torch.cuda.is_available()
    args.reference_device = 'cuda' if on_gpu else 'cpu'
  if args.reference_device.startswith('cuda'):
    torch.backends.cudnn.benchmark = True  # as the official recipes set it
  if args.reference_feed == 'loader':
    return torch_reference, torch_reference.LoaderFeed(
        args.num_train, args.num_classes, args.batch, args.loader_workers, args.reference_device)
  return torch_reference, torch_reference.Augment(args.num_train, args.num_classes,
                                                  device=args.reference_device)


def torch_train(ref, data, name: str, config, batch: int, args) -> Timed | None:
  """The PyTorch step of method row ``name`` (None where the reference has no such row)."""
  methods_known = ('kd', 'crd', 'cid', 'icd', 'train')
  student, teacher = config.model.name, config.teacher.model
  if ref is None or name not in methods_known or not ref.has_model(student) or (
      name != 'train' and not ref.has_model(teacher)):
    return None
  import torch
  step = ref.build_step(name, student, teacher, args.num_classes, data, dict(config.method),
                        args.reference_device)
  gen = torch.Generator().manual_seed(0)
  return Timed(lambda: step(torch.randint(0, args.num_train, (batch,), generator=gen)))


def _add_reference(row: dict[str, Any], reference: Timed | None) -> dict[str, Any]:
  """PyTorch's times of the same step and kdjax's speed relative to them (> 1: kdjax faster)."""
  if reference is not None:
    row['torch'] = reference.stats()
    row['torch']['images_per_s'] = row['batch'] / row['torch']['step_s']
    row['vs_torch'] = row['torch']['step_s'] / row['step_s']
    row['vs_torch_cpu'] = row['torch']['cpu_s'] / row['cpu_s']
  return row


def _reference_info(ref, args: argparse.Namespace) -> dict[str, Any] | None:
  if ref is None:
    return None
  import torch
  return {'framework': 'torch', 'version': torch.__version__, 'threads': torch.get_num_threads(),
          'omp_wait_policy': os.environ.get('OMP_WAIT_POLICY', ''),
          'device': args.reference_device, 'feed': args.reference_feed,
          'source': 'experiments/torch_reference.py (NCHW CIFAR ResNets, eval teacher under '
                    'no_grad, same loss and SGD, ' + (
                        f'batches from a DataLoader with {args.loader_workers} workers '
                        'augmenting on the CPU' if args.reference_feed == 'loader' else
                        'augmentation inside the step') + ')'}


def per_step(row: dict[str, Any], k: int) -> dict[str, Any]:
  """A row timed per call of ``k`` steps, restated per step."""
  for key in ('step_s', 'step_s_min', 'cpu_s'):
    row[key] /= k
  row['flops_per_step'] /= k
  row['steps_per_call'] = k
  return row


def projection(timed: Timed, row: dict[str, Any], k: int, eval_batch_s: float,
               args: argparse.Namespace, reference: Timed | None = None) -> dict[str, Any]:
  """How busy the device is when calls are issued as training issues them, and the
  projected wall time of a whole run of ``args.epochs`` epochs at this row's speed.

  ``busy_fraction`` = (calls x the blocked call's median time) / the pipelined wall time,
  at most 1: the blocked time is the device's work plus one dispatch, so 1 means the
  device never waited for the host between calls, and less means it did. With
  ``--whole_epoch`` one whole epoch of steps is also timed, issued the same way, and so is
  the PyTorch ``reference`` step (if any) the same number of times."""
  calls = max(args.steps, PIPELINED_MIN_CALLS)
  wall = timed.pipelined(calls)
  step_s = wall / (calls * k)
  steps_per_epoch = -(-args.num_train // row['batch'])
  eval_batches = -(-args.num_test // args.eval_batch)
  epoch_s = steps_per_epoch * step_s + eval_batches * eval_batch_s
  measured = {}
  if args.whole_epoch:
    epoch_calls = -(-steps_per_epoch // k)
    measured['epoch_train_s'] = (timed.pipelined(epoch_calls) * steps_per_epoch
                                 / (epoch_calls * k))
    if reference is not None:
      t = time.perf_counter()
      for _ in range(steps_per_epoch):
        reference.fn()
      measured['torch_epoch_train_s'] = time.perf_counter() - t
  return {**measured, 'method': row['method'], 'steps_per_call': k, 'calls': calls, 'wall_s': wall,
          'step_s': step_s, 'busy_fraction': min(1.0, calls * k * row['step_s'] / wall),
          'epochs': args.epochs, 'steps_per_epoch': steps_per_epoch,
          'eval_batch': args.eval_batch, 'eval_batches': eval_batches,
          'eval_batch_s': eval_batch_s, 'epoch_s': epoch_s, 'run_s': args.epochs * epoch_s}


def _derive(row: dict[str, Any], peak: float) -> dict[str, Any]:
  row['images_per_s'] = row['batch'] / row['step_s']
  row['tflops_per_s'] = row['flops_per_step'] / row['step_s'] / 1e12
  row['mfu'] = row['flops_per_step'] / row['step_s'] / peak
  return row


def _ratio(r: dict[str, Any], key: str = 'vs_torch') -> str:
  return f'{r[key]:.2f}x' if r.get(key) else '-'


def _torch_ms(r: dict[str, Any]) -> str:
  return f"{1e3 * r['torch']['step_s']:.1f}" if 'torch' in r else '-'


def markdown(result: dict[str, Any]) -> str:
  d, pk = result['device'], result['peak_flops']
  ref = result.get('reference')
  load = result.get('load_average_1min')
  lines = [f"# kdjax benchmark: {d['description']}", '',
           f"jax {result['jax_version']}, {result['date']}, commit {result['git_commit']}; "
           f"inputs: {result['inputs']}; dtype {result['dtype']}.",
           "Measured peak: " + ', '.join(f'{k} {v / 1e12:.3f} TFLOP/s' for k, v in pk.items())
           + f"; MFU against {result['dtype']}. Memory: {result['memory_kind']}; XLA temp = "
           'scratch of the compiled step.',
           f"XLA_FLAGS: `{result.get('xla_flags') or '(none)'}`."
           + (f" 1-min load average {load['start']:.1f} at the start, {load['end']:.1f} at the "
              'end (a shared machine: other processes ran during the timing).' if load else ''),
           f"Times: median of {result['steps']} calls after {result['warmup']} warm-up calls"
           + (f" of {result['steps_per_call']} steps each (lax.scan), stated per step"
              if result.get('steps_per_call', 1) > 1 else '')
           + ('; kdjax and PyTorch called alternately, one call each per round, so both see '
              "the same load. 'kdjax/PyTorch' = PyTorch's time / kdjax's (> 1: kdjax faster), "
              "from wall time and from process CPU time (CPU: user + system seconds of all "
              "threads, which the other processes' load does not inflate). "
              f"Reference: torch {ref['version']} on {ref.get('device', 'cpu')}, "
              f"{ref['threads']} threads, "
              f"OMP_WAIT_POLICY={ref.get('omp_wait_policy') or '(unset)'}, {ref['source']}."
              if ref else '.'),
           '', f"`{result['command']}`", '']
  if result['methods']:
    lines += [f"## Methods: {result['teacher']} -> {result['student']}, batch {result['batch']}", '',
              '| method | variant | compile s | step ms | CPU s/step | img/s | PyTorch step ms '
              '| kdjax/PyTorch (wall) | kdjax/PyTorch (CPU) | GFLOP/step | MFU % | vs KD '
              '| XLA temp MB | peak mem MB |', '|' + '---|' * 14]
    for r in result['methods']:
      vs = f"{r['vs_kd']:.2f}x" if r.get('vs_kd') else '-'
      lines.append(f"| {r['method']} | {r.get('variant', 'xla')} | {r['compile_s']:.1f} | "
                   f"{1e3 * r['step_s']:.1f} | {r['cpu_s']:.2f} | {r['images_per_s']:.0f} | "
                   f"{_torch_ms(r)} | {_ratio(r)} | {_ratio(r, 'vs_torch_cpu')} | "
                   f"{r['flops_per_step'] / 1e9:.1f} | {100 * r['mfu']:.1f} | {vs} | "
                   f"{r['xla_temp_bytes'] / 2**20:.0f} | {r['peak_memory_bytes'] / 2**20:.0f} |")
    lines.append('')
    used = sorted({r.get('variant', 'xla') for r in result['methods']})
    lines += [f"Variants: " + '; '.join(f"`{v}`: {result['variants'][v]}" for v in used), '']
  p = result.get('projection')
  if p:
    lines += [f"## A whole run: {p['epochs']} epochs of KD ({result['teacher']} -> "
              f"{result['student']}, batch {result['batch']})", '',
              f"{p['calls']} calls of {p['steps_per_call']} step(s) issued as training issues "
              "them (each dispatched before the previous call's metrics are read). Busy = "
              "calls x the blocked call's median time / this wall time (at most 1: 1 means the "
              "device never waited for the host). Projected = epochs x (steps x pipelined step "
              "time + test batches x the student's eval forward).", '',
              '| steps/call | pipelined step ms | busy % | steps/epoch | eval batch | eval ms/batch '
              '| epoch s | projected run h |', '|' + '---|' * 8,
              f"| {p['steps_per_call']} | {1e3 * p['step_s']:.1f} | {100 * p['busy_fraction']:.0f} | "
              f"{p['steps_per_epoch']} | {p['eval_batch']} x {p['eval_batches']} | "
              f"{1e3 * p['eval_batch_s']:.1f} | {p['epoch_s']:.0f} | {p['run_s'] / 3600:.1f} |", '']
    if 'epoch_train_s' in p:
      torch_epoch = p.get('torch_epoch_train_s')
      lines += [f"One whole epoch of training steps, measured: kdjax {p['epoch_train_s']:.1f} s"
                + (f", PyTorch {torch_epoch:.1f} s (kdjax/PyTorch "
                   f"{torch_epoch / p['epoch_train_s']:.2f}x)" if torch_epoch else '') + '.', '']
  if result['models']:
    lines += ['## Models alone (forward = eval mode; forward+backward = train-mode CE '
              'gradients, no update; train = the CE train step)', '',
              '| model | batch | fwd ms | PyTorch fwd ms | fwd kdjax/PyTorch (wall / CPU) '
              '| fwd+bwd ms | PyTorch fwd+bwd ms | fwd+bwd kdjax/PyTorch (wall / CPU) '
              '| train img/s | GFLOP/train step | train MFU % | compile s (fwd / fwd+bwd / train) |',
              '|' + '---|' * 12]
    for r in result['models']:
      f, fb, t = r['forward'], r['forward_backward'], r['train']
      lines.append(f"| {r['model']} | {r['batch']} | {1e3 * f['step_s']:.1f} | {_torch_ms(f)} | "
                   f"{_ratio(f)} / {_ratio(f, 'vs_torch_cpu')} | {1e3 * fb['step_s']:.1f} | "
                   f"{_torch_ms(fb)} | {_ratio(fb)} / {_ratio(fb, 'vs_torch_cpu')} | "
                   f"{t['images_per_s']:.0f} | {t['flops_per_step'] / 1e9:.1f} | "
                   f"{100 * t['mfu']:.1f} | {f['compile_s']:.1f} / {fb['compile_s']:.1f} / "
                   f"{t['compile_s']:.1f} |")
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
  unknown = [v for v in args.variants.split(',') if v not in VARIANTS]
  if unknown:
    raise SystemExit(f"benchmark: unknown variant(s) {', '.join(unknown)}; accepted: "
                     f"{', '.join(VARIANTS)}")
  ref, ref_data = torch_steps(args.reference, args)
  k = steps_per_call(args.steps_per_call)
  load_before = os.getloadavg()
  rows, projected = [], None
  for name in names:
    config = method_config(name, args.teacher, args.student, args.dtype)
    for variant in (args.variants.split(',') if name == 'kd' else ['xla']):
      layers.set_conv_impl('matmul_grad' if variant == 'matmul_grad' else None)
      info, timed = prepare_train(config, args.batch, args, mesh, images, labels, variant, k)
      layers.set_conv_impl(None)  # traced and compiled: later rows get the default again
      reference = torch_train(ref, ref_data, name, config, args.batch, args)
      interleave([timed] + ([reference] if reference else []), args.warmup, args.steps)
      row = _derive(per_step({'method': name, 'variant': variant, 'batch': args.batch,
                              **finish(info, timed)}, k), pk)
      _add_reference(row, reference)
      rows.append(row)
      if name == 'kd' and variant == 'xla':
        projected = projection(timed, row, k, eval_batch_seconds(args, mesh, images), args,
                               reference)
        _say(f"projection: {projected['busy_fraction']:.0%} busy, {args.epochs} epochs in "
             f"{projected['run_s'] / 3600:.1f} h")
      _say(f"{name} [{variant}]: {1e3 * row['step_s']:.1f} ms/step, compile "
           f"{row['compile_s']:.1f} s" + (f", PyTorch {1e3 * row['torch']['step_s']:.1f} ms"
                                           if reference else ''))
  kd = next((r['step_s'] for r in rows if r['method'] == 'kd' and r['variant'] == 'xla'), None)
  for r in rows:
    r['vs_kd'] = r['step_s'] / kd if kd else None
  model_rows = []
  for name in filter(None, args.models.split(',')):
    for b in (int(s) for s in args.batch_sizes.split(',')):
      config = method_config('train', '', name, args.dtype)
      entry = {'model': name, 'batch': b}
      has_ref = ref is not None and ref.has_model(name)
      for key, prep, ref_build in (
          ('forward', lambda: prepare_forward(name, b, args, mesh, images),
           lambda: ref.build_forward(name, args.num_classes, b, args.reference_device)),
          ('forward_backward', lambda: prepare_forward_backward(name, b, args, mesh, images, labels),
           lambda: ref.build_forward_backward(name, args.num_classes, b,
                                              args.reference_device)),
          ('train', lambda: prepare_train(config, b, args, mesh, images, labels, k=k), None)):
        info, timed = prep()
        reference = Timed(ref_build()) if has_ref and ref_build else None
        interleave([timed] + ([reference] if reference else []), args.warmup, args.steps)
        stats = {'batch': b, **finish(info, timed)}
        stats = per_step(stats, k) if key == 'train' else stats
        entry[key] = _add_reference(_derive(stats, pk), reference)
      model_rows.append(entry)
      _say(f"{name} batch {b}: forward {entry['forward']['images_per_s']:.0f} img/s, "
           f"forward+backward {entry['forward_backward']['images_per_s']:.0f} img/s, "
           f"train {entry['train']['images_per_s']:.0f} img/s")
  load_after = os.getloadavg()
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
      'memory_kind': peak_memory()[1], 'methods': rows, 'models': model_rows,
      'projection': projected, 'steps_per_call': k,
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'variants': VARIANTS,
      'reference': _reference_info(ref, args),
      'load_average_1min': {'start': load_before[0], 'end': load_after[0]}}
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
