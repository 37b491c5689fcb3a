# Probe (issue 18): train-mode BatchNorm + ReLU, XLA (kdjax.models.layers.BatchNorm) vs
# PyTorch. Run as: python experiments/probes/bn.py
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__))); sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..'))
os.environ.setdefault('OMP_WAIT_POLICY','PASSIVE')
import numpy as np, jax, jax.numpy as jnp, torch
from timing import bench
from kdjax.models.layers import BatchNorm
torch.set_num_threads(2)
def tbench(fn,n=5):
  fn(); ts=[]
  for _ in range(n):
    t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
  return np.median(ts)*1e3
k=jax.random.PRNGKey(0)
for H,c in [(32,64),(16,128),(8,256)]:
  x=jax.random.normal(k,(64,H,H,c))
  bn=BatchNorm()
  v=bn.init(k,x,True)
  def f(p,x):
    y,_=bn.apply({'params':p,'batch_stats':v['batch_stats']},x,True,mutable=['batch_stats'])
    return jax.nn.relu(y)
  g=jnp.ones_like(x)
  fb=lambda p,x,g: jax.vjp(f,p,x)[1](g)
  mean=lambda x: jnp.mean(x,axis=(0,1,2))
  tx=torch.randn(64,c,H,H,requires_grad=True); tb=torch.nn.BatchNorm2d(c); tg=torch.ones_like(tx)
  def tfb():
    y=torch.relu(tb(tx)); y.backward(tg)
  def tf():
    with torch.no_grad(): torch.relu(tb(tx))
  print(f'{H} {c}: xla bn+relu fwd {bench(f,v["params"],x):.1f} fwd+bwd {bench(fb,v["params"],x,g):.1f} chan-mean {bench(mean,x):.1f} relu {bench(jax.nn.relu,x):.1f} | torch fwd {tbench(tf):.1f} fwd+bwd {tbench(tfb):.1f}', flush=True)
