# Probe behind results/conv_probe_cpu.md (issue 18): run as python experiments/probes/bf16.py
import time
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from timing import bench
NHWC=('NHWC','HWIO','NHWC')
B=64
for H,ci in [(32,64),(8,256)]:
  x=jax.random.normal(jax.random.PRNGKey(0),(B,H,H,ci)); w=jax.random.normal(jax.random.PRNGKey(1),(3,3,ci,ci))
  conv=lambda x,w: lax.conv_general_dilated(x,w,(1,1),((1,1),(1,1)),dimension_numbers=NHWC)
  conv32=lambda x,w: lax.conv_general_dilated(x,w,(1,1),((1,1),(1,1)),dimension_numbers=NHWC,preferred_element_type=jnp.float32)
  print(H,ci,'f32',bench(conv,x,w),'bf16',bench(conv,x.astype(jnp.bfloat16),w.astype(jnp.bfloat16)),
        'bf16->f32',bench(conv32,x.astype(jnp.bfloat16),w.astype(jnp.bfloat16)))
a=jax.random.normal(jax.random.PRNGKey(0),(2048,2048))
print('mm f32',bench(lambda a:a@a,a),'bf16',bench(lambda a:a@a,a.astype(jnp.bfloat16)), '17.2 GFLOP')
