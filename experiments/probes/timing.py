"""The timing every probe here uses: median of n jitted calls after one warm-up, in ms."""
import time

import jax
import numpy as np


def bench(f, *args, n=5):
  f = jax.jit(f)
  jax.block_until_ready(f(*args))
  times = []
  for _ in range(n):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    times.append(time.perf_counter() - t)
  return np.median(times) * 1e3
