"""Speed of data-free distillation: synthesis, student steps on the pool, KDCI's overhead.

  python experiments/benchmark_datafree.py                     # both pairs, four methods
  python experiments/benchmark_datafree.py --pairs wrn_40_2-wrn_16_1 --methods fast --batch 64

Per teacher/student pair and method (each with its default ``g_steps`` from
``configs/datafree/<method>.py``): the inner synthesis step (compile time, median step
time over ``--steps`` calls), run both ways the engine can run it — one jitted step per
call (``steps_per_call=1``, the CPU default) and ``--scan`` steps fused in one
``lax.fori_loop`` (the accelerator default), per step — the round's ``begin`` + ``finish``,
and from them the images synthesised per second at the method's ``g_steps``. Then the
student step on a pool (KL at T = 20, the generic step gathering from the pool on the
device) without and with KDCI, and KDCI's dictionary rebuild on a full pool, giving
KDCI's extra time per round in percent. Teachers have random weights (the cost does not
depend on them); the pool holds random uint8 images (BENCHMARK INPUTS, not a dataset).
Writes JSON (``--out``) and a markdown table next to it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from benchmark import finish, interleave, peak_memory, prepare
from common import ROOT, load_config_module, provenance, write_result
from kdjax import datafree
from kdjax.data.sources import known_normalization
from kdjax.models import create_model
from kdjax.models.generator import create_generator
from kdjax.train.assemble import Teacher, assemble, configured, own_buffers
from kdjax.train.datafree import _rebuild_dictionary
from kdjax.train.mesh import make_mesh, replicate
from kdjax.train.steps import DataSpec, build_train_chunk

INPUTS = 'random-weight teachers; random uint8 pool images (benchmark input, not a dataset)'


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--pairs', default='resnet34-resnet18,wrn_40_2-wrn_16_1')
  p.add_argument('--methods', default='dafl,deepinv,cmi,fast')
  p.add_argument('--batch', type=int, default=256, help='synthesis and student batch')
  p.add_argument('--num_classes', type=int, default=100)
  p.add_argument('--pool', type=int, default=4096, help='pool rows for the student step')
  p.add_argument('--dict_pool', type=int, default=50000, help='pool rows KDCI clusters')
  p.add_argument('--scan', type=int, default=2,
                 help='inner steps fused in the scan row; 0 = no scan row (on the CPU a '
                      'scan of big models takes hours)')
  p.add_argument('--warmup', type=int, default=1)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--out', default='')
  return p.parse_args(argv)


def _config(method: str, teacher: str, student: str, batch: int, kdci: bool):
  module = load_config_module(os.path.join(ROOT, 'configs', 'datafree', f'{method}.py'))
  # the recipe of a table pair (Fast's weights follow the teacher), then the models asked for
  pair = f'cifar100-{teacher}-{student}'
  c = module.get_config((pair if pair in module.ARGS else 'cifar100-wrn_40_2-wrn_16_1')
                        + ('+kdci' if kdci else ''))
  c.teacher.model, c.model.name = teacher, student
  c.datafree.synthesis_batch_size = c.train.batch_size = batch
  return c


def _timed(fn, *args, reps: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def synthesis_row(method: str, teacher_name: str, student_name: str, args, mesh) -> dict:
  c = _config(method, teacher_name, student_name, args.batch, False)
  d = c.datafree
  synth = datafree.get_synthesizer(method)
  teacher = create_model(teacher_name, args.num_classes)
  student = create_model(student_name, args.num_classes)
  x0 = jnp.zeros((2, 32, 32, 3))
  t_vars = replicate(teacher.init(jax.random.PRNGKey(1), x0, train=False), mesh)
  s_vars = replicate(student.init(jax.random.PRNGKey(2), x0, train=False), mesh)
  mean, std = known_normalization('cifar100')
  ctx = datafree.SynthContext(
      teacher=teacher, student=student, generator=create_generator(d.nz, d.ngf, 32, 3),
      num_classes=args.num_classes, image_shape=(32, 32, 3), mean=mean, std=std,
      batch_size=args.batch, rounds_per_epoch=1, config=ml_collections.FrozenConfigDict(d),
      mesh=mesh)
  state = synth.init(jax.random.PRNGKey(3), t_vars, ctx)
  g_steps = d[method].g_steps
  key, rnd = jax.random.PRNGKey(4), jnp.asarray(0, jnp.int32)
  row: dict[str, Any] = {'pair': f'{teacher_name}->{student_name}', 'method': method,
                         'g_steps': g_steps, 'batch': args.batch}
  for per_call in (1, args.scan) if args.scan else (1,):
    rnd_fn = datafree.build_synthesize(synth, ctx, max(per_call, g_steps), per_call)
    carry = rnd_fn.begin(state, key, rnd)
    t = time.perf_counter()
    compiled = rnd_fn.inner.lower(carry, t_vars, s_vars, rnd).compile()
    compile_s = time.perf_counter() - t
    times = []
    for i in range(args.warmup + args.steps):
      t = time.perf_counter()
      carry = jax.block_until_ready(compiled(carry, t_vars, s_vars, rnd))
      times.append(time.perf_counter() - t)
    row[f'inner_{per_call}_compile_s'] = compile_s
    row[f'inner_{per_call}_step_s'] = statistics.median(times[args.warmup:]) / per_call
  begin_s = _timed(rnd_fn.begin, state, key, rnd, reps=args.steps)
  carry = rnd_fn.begin(state, key, rnd)
  finish_s = _timed(rnd_fn.finish, state, carry, reps=args.steps)
  scan_s = row.get(f'inner_{args.scan}_step_s', float('inf'))
  best = min(row['inner_1_step_s'], scan_s)
  row['round_s'] = begin_s + finish_s + g_steps * best
  images = args.batch * ((d.kd_steps or d.ep_steps) if synth.fresh_pool else 1)
  row['synth_images_per_s'] = images / row['round_s']
  row['faster'] = ('not compared' if not args.scan else 'per-step calls'
                   if row['inner_1_step_s'] <= scan_s else f'scan of {args.scan}')
  row['peak_memory_bytes'] = peak_memory()[0]
  return row


def student_rows(method: str, teacher_name: str, student_name: str, args, mesh) -> dict:
  """The student step on the pool without and with KDCI, timed call by call in turns (the
  same machine load for both), and KDCI's rebuild on a full pool."""
  out, prepared = {}, {}
  for kdci in (False, True):
    c = _config(method, teacher_name, student_name, args.batch, kdci)
    teacher = create_model(teacher_name, args.num_classes)
    t_vars = teacher.init(jax.random.PRNGKey(1), jnp.zeros((2, 32, 32, 3)), train=False)
    mean, std = known_normalization('cifar100')
    setup = assemble(c, configured(c), num_classes=args.num_classes,
                     num_train=0 if kdci else args.pool, image_shape=(32, 32, 3),
                     data=DataSpec(mean, std, c.data.crop_padding, c.data.flip),
                     steps_per_epoch=c.datafree.ep_steps, teacher=Teacher(teacher, t_vars, {}))
    chunk = build_train_chunk(setup.train_step(mesh), mesh, 1)
    images = jax.random.randint(jax.random.PRNGKey(5), (args.pool, 32, 32, 3), 0, 256,
                                jnp.int32).astype(jnp.uint8)
    labels = jnp.zeros((args.pool,), jnp.int32)
    idx = [jax.random.randint(jax.random.PRNGKey(10 + i), (1, args.batch), 0, args.pool)
           for i in range(args.warmup + args.steps + 1)]
    method_state = own_buffers(setup.state.method_state)  # the rebuild donates it
    state, t_vars = replicate(setup.state, mesh), replicate(t_vars, mesh)
    prepared['kdci' if kdci else 'student'] = prepare(
        chunk, (state, t_vars, images, labels, idx[0]),
        lambda a, o, i: (o[0], a[1], a[2], a[3], idx[i + 1]))
    if kdci:
      feature_dim = int(jax.eval_shape(lambda v, x: teacher.apply(v, x), t_vars,
                                       jnp.zeros((1, 32, 32, 3)))[1][-1].shape[-1])
      pool = datafree.init_pool(args.dict_pool, (32, 32, 3), args.num_classes, feature_dim)
      pool = pool.replace(features=jax.random.normal(jax.random.PRNGKey(6),
                                                     pool.features.shape),
                          count=jnp.asarray(args.dict_pool, jnp.int32))
      rebuild = jax.jit(lambda ms, p, k: _rebuild_dictionary(ms, p, k, setup.method_config))
      out['kdci_rebuild_s'] = _timed(rebuild, method_state, pool, jax.random.PRNGKey(7), reps=2)
  interleave([t for _, t in prepared.values()], args.warmup, args.steps)
  for name, (info, timed) in prepared.items():
    res = finish(info, timed)
    out[f'{name}_step_s'] = res['step_s']
    out[f'{name}_step_temp_bytes'] = res['xla_temp_bytes']
  return out


def markdown(result: dict) -> str:
  lines = [f"# Data-free benchmark ({result['provenance']['devices']})", '',
           f"`{result['provenance']['command']}` at {result['provenance']['git_commit']}, "
           f"{result['provenance']['date']}. Inputs: {INPUTS}.", '',
           '| pair | method | g_steps | batch | inner step, 1/call (s) | inner step, in a scan '
           '(s) | faster | synth img/s | student step (s) | +KDCI step (s) | KDCI rebuild (s) '
           '| KDCI extra time per round | KDCI extra step memory |', '|' + '---|' * 13]
  scan_key = f"inner_{result['scan']}_step_s"
  for r in result['rows']:
    scan = f'{r[scan_key]:.3f}' if scan_key in r else '-'
    mem = (r['kdci_step_temp_bytes'] - r['student_step_temp_bytes']) / max(
        r['student_step_temp_bytes'], 1)
    lines.append(
        f"| {r['pair']} | {r['method']} | {r['g_steps']} | {r['batch']} | "
        f"{r['inner_1_step_s']:.3f} | {scan} | {r['faster']} | "
        f"{r['synth_images_per_s']:.2f} | {r['student_step_s']:.3f} | {r['kdci_step_s']:.3f} | "
        f"{r['kdci_rebuild_s']:.2f} | {100 * r['kdci_extra']:.1f}% | {100 * mem:+.1f}% |")
  lines += ['', 'KDCI extra time per round = (kd_steps x (KDCI step - student step) + one '
            'rebuild) / (synthesis round + kd_steps x student step), with the configs\' '
            'kd_steps and a rebuild every round (`dict_every` = 1). KDCI extra step memory: '
            'XLA scratch of the student step with KDCI over without.']
  return '\n'.join(lines) + '\n'


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  mesh = make_mesh()
  rows = []
  for pair in args.pairs.split(','):
    teacher, student = pair.split('-')
    for method in args.methods.split(','):
      row = synthesis_row(method, teacher, student, args, mesh)
      row.update(student_rows(method, teacher, student, args, mesh))
      d = _config(method, teacher, student, args.batch, False).datafree
      kd_steps = d.kd_steps or d.ep_steps
      base = row['round_s'] + kd_steps * row['student_step_s']
      row['kdci_extra'] = (kd_steps * (row['kdci_step_s'] - row['student_step_s'])
                           + row['kdci_rebuild_s']) / base
      rows.append(row)
      print(json.dumps(row), flush=True)
  result = {'provenance': provenance('experiments/benchmark_datafree.py', argv),
            'scan': args.scan, 'rows': rows}
  out = args.out or os.path.join(ROOT, 'results',
                                 f'benchmark_datafree_{jax.devices()[0].platform}.json')
  write_result(out, result, markdown(result))
  return result


if __name__ == '__main__':
  main()
