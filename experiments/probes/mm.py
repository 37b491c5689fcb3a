# Probe behind results/conv_probe_cpu.md (issue 18): run as python experiments/probes/mm.py
import time
import jax, jax.numpy as jnp, numpy as np
from timing import bench
a=jax.random.normal(jax.random.PRNGKey(0),(2048,2048))
X=jax.random.normal(jax.random.PRNGKey(0),(65536,64))
print('mm f32',bench(lambda a:a@a,a),'bf16',bench(lambda a:a@a,a.astype(jnp.bfloat16)),'XtX',bench(lambda X:X.T@X,X))
