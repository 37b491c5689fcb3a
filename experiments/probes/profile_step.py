# Probe (issue 18): where the time of one method's train step goes, per compiled op (XLA
# CPU thunks), from a jax.profiler trace. Run as:
#   XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python experiments/probes/profile_step.py crd \
#       [benchmark.py arguments, e.g. --teacher resnet56 --student resnet20]
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, '..'), os.path.join(HERE, '..', '..')]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import benchmark  # noqa: E402
from kdjax.train.mesh import make_mesh, replicate  # noqa: E402

CALLS = 3

method = sys.argv[1] if len(sys.argv) > 1 else 'kd'
mesh = make_mesh()
args = benchmark.parse_args(['--warmup', '1', '--steps', '3'] + sys.argv[2:])
images = replicate(jax.random.bits(jax.random.PRNGKey(0), (50000, 32, 32, 3), jnp.uint8), mesh)
labels = replicate(jax.random.randint(jax.random.PRNGKey(1), (50000,), 0, 100, jnp.int32), mesh)
config = benchmark.method_config(method, args.teacher, args.student, 'float32')
_, timed = benchmark.prepare_train(config, args.batch, args, mesh, images, labels)
for _ in range(2):
  timed.once(False)
trace_dir = tempfile.mkdtemp(prefix='kdjax_profile_')
jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
for _ in range(CALLS):
  timed.once(False)
jax.profiler.stop_trace()
trace = json.load(gzip.open(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True)[-1]))
per_op, per_kind = collections.Counter(), collections.Counter()
for e in trace['traceEvents']:
  name = e.get('name', '')
  if e.get('ph') != 'X' or name.startswith(('Thunk', '$')) or 'Await' in name:
    continue
  per_op[name] += e['dur'] / CALLS / 1e3
  per_kind[re.sub(r'\.\d+$', '', name)] += e['dur'] / CALLS / 1e3
print(f'{method}: ms per step by op kind (thunks may overlap: the sum can exceed the step)')
for name, ms in per_kind.most_common(12):
  print(f'{ms:9.1f}  {name}')
print('largest ops:')
for name, ms in per_op.most_common(12):
  print(f'{ms:9.1f}  {name}')
