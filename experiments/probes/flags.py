# Probe (issue 18): conv fwd / fwd+grads and a matmul under the XLA_FLAGS of the environment.
# Run once per flag set: XLA_FLAGS=--xla_cpu_use_xnnpack=true python experiments/probes/flags.py
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jax, jax.numpy as jnp
from jax import lax
from timing import bench
NHWC=('NHWC','HWIO','NHWC')
k=jax.random.PRNGKey(0)
out=[]
for H,ci in [(32,64),(8,256)]:
  x=jax.random.normal(k,(64,H,H,ci)); w=jax.random.normal(k,(3,3,ci,ci))*0.05; g=jax.random.normal(k,(64,H,H,ci))
  conv=lambda x,w: lax.conv_general_dilated(x,w,(1,1),((1,1),(1,1)),dimension_numbers=NHWC)
  out.append(bench(conv,x,w)); out.append(bench(lambda x,w,g: jax.vjp(conv,x,w)[1](g),x,w,g))
a=jax.random.normal(k,(2048,2048))
out.append(bench(lambda a: a@a, a))
print(os.environ.get('XLA_FLAGS',''), ' '.join(f'{v:.1f}' for v in out), flush=True)
