# Probe (issue 18): each distinct convolution of resnet8x4 / resnet32x4 alone, XLA vs PyTorch,
# forward and forward + gradients. Run as: python experiments/probes/layers.py
import sys, os, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault('OMP_WAIT_POLICY','PASSIVE')
import numpy as np, jax, jax.numpy as jnp, torch
from jax import lax
from timing import bench
torch.set_num_threads(2)
NHWC=('NHWC','HWIO','NHWC')
k=jax.random.PRNGKey(0)
B=64
def tbench(fn,n=5):
  fn(); ts=[]
  for _ in range(n):
    t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
  return np.median(ts)*1e3
# (H_in, cin, cout, kernel, stride, need_dx)
for H,ci,co,kk,s,dx in [(32,3,32,3,1,False),(32,32,64,3,1,True),(32,32,64,1,1,True),(32,64,64,3,1,True),
                        (32,64,128,3,2,True),(32,64,128,1,2,True),(16,128,128,3,1,True),(16,128,256,3,2,True),(8,256,256,3,1,True)]:
  p=kk//2
  x=jax.random.normal(k,(B,H,H,ci)); w=jax.random.normal(k,(kk,kk,ci,co))*0.05
  conv=lambda x,w: lax.conv_general_dilated(x,w,(s,s),((p,p),(p,p)),dimension_numbers=NHWC)
  y=conv(x,w); g=jnp.ones_like(y)
  if dx:
    jf=lambda x,w,g: jax.vjp(conv,x,w)[1](g)
  else:
    jf=lambda x,w,g: jax.vjp(lambda w: conv(x,w),w)[1](g)
  jt=bench(conv,x,w); jb=bench(jf,x,w,g)
  tx=torch.randn(B,ci,H,H,requires_grad=dx); c=torch.nn.Conv2d(ci,co,kk,s,p,bias=False)
  def fb():
    yy=c(tx); yy.backward(torch.ones_like(yy))
  def f():
    with torch.no_grad(): c(tx)
  print(f'{H}x{H} {ci}->{co} k{kk} s{s}: xla fwd {jt:.1f} fwd+bwd {jb:.1f} | torch fwd {tbench(f):.1f} fwd+bwd {tbench(fb):.1f}',flush=True)
