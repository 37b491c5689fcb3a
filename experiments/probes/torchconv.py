# Probe behind results/conv_probe_cpu.md (issue 18): run as python experiments/probes/torchconv.py
import torch,time,numpy as np,os
torch.set_num_threads(int(os.environ.get('T',2)))
B=int(os.environ.get('B',64))
for H,ci in [(32,64),(16,128),(8,256)]:
  x=torch.randn(B,ci,H,H,requires_grad=True); c=torch.nn.Conv2d(ci,ci,3,padding=1,bias=False)
  def fb():
    y=c(x); y.backward(torch.ones_like(y))
  def f():
    with torch.no_grad(): c(x)
  for fn,name in [(f,'fwd'),(fb,'fwd+bwd')]:
    fn(); ts=[]
    for _ in range(5):
      t=time.perf_counter(); fn(); ts.append(time.perf_counter()-t)
    print(H,ci,name,f'{np.median(ts)*1e3:.1f}')
