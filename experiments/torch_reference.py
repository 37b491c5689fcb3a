"""The PyTorch side of ``benchmark.py --reference torch``: the same train steps in torch.

Written here from the spec (``../shared/specs/methods.md``), not copied: the CIFAR ResNets
of the KD benchmarks in their reference NCHW form, and the KD, CRD, CID and ICD steps
as the official recipes run them: eval-mode teacher under ``no_grad``, train-mode
student, ``gamma * CE + alpha * KL_T + beta * L_method``, SGD (momentum 0.9, weight
decay 5e-4, lr 0.05; Nesterov for CID). The batch is gathered by index from a uint8
training set and augmented (4-pixel zero-pad random crop, flip, normalise) inside the
timed step, as kdjax's step does on the device. Only what a step costs matters here,
so weights are random and no accuracy is claimed. torch is an optional extra.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)


class BasicBlock(nn.Module):
  def __init__(self, cin: int, planes: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    short = x if self.downsample is None else self.downsample(x)
    return F.relu(out + short)


class CifarResNet(nn.Module):
  """Depth 6n+2, basic blocks; returns (logits, [stem, stage1, stage2, stage3, pooled])."""

  def __init__(self, depth: int, widths: Sequence[int], num_classes: int):
    super().__init__()
    n = (depth - 2) // 6
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    stages, cin = [], widths[0]
    for width, stride in zip(widths[1:], (1, 2, 2)):
      blocks = []
      for i in range(n):
        blocks.append(BasicBlock(cin, width, stride if i == 0 else 1))
        cin = width
      stages.append(nn.Sequential(*blocks))
    self.stages = nn.ModuleList(stages)
    self.fc = nn.Linear(cin, num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    feats = [x]
    for stage in self.stages:
      x = stage(x)
      feats.append(x)
    pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    feats.append(pooled)
    return self.fc(pooled), feats


_RESNETS = {f'resnet{d}': (d, (16, 16, 32, 64)) for d in (8, 14, 20, 32, 44, 56, 110)}
_RESNETS.update({'resnet8x4': (8, (32, 64, 128, 256)), 'resnet32x4': (32, (32, 64, 128, 256))})


def has_model(name: str) -> bool:
  return name in _RESNETS


def create_model(name: str, num_classes: int) -> nn.Module:
  depth, widths = _RESNETS[name]
  return CifarResNet(depth, widths, num_classes)


# ---------------------------------------------------------------- data on the "device"

def synthetic_set(num_train: int, num_classes: int, seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
  """Random uint8 NHWC images and labels: benchmark inputs, not a dataset."""
  g = torch.Generator().manual_seed(seed)
  return (torch.randint(0, 256, (num_train, 32, 32, 3), dtype=torch.uint8, generator=g),
          torch.randint(0, num_classes, (num_train,), generator=g))


def synchronize(device: str) -> None:
  """Waits for the device's queued work (CUDA runs asynchronously)."""
  if device.startswith('cuda'):
    torch.cuda.synchronize()


class Augment:
  """Gathers rows of a uint8 NHWC training set held on ``device`` and applies the §1 train
  augmentation there, as kdjax's step does: ``augment(idx) -> (x, y, idx)``."""

  def __init__(self, num_train: int, num_classes: int = 100, seed: int = 0, padding: int = 4,
               device: str = 'cpu'):
    images, labels = synthetic_set(num_train, num_classes, seed)
    self.images, self.labels, self.device = images.to(device), labels.to(device), device
    self.padding = padding
    self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
    self.std = torch.tensor(STD, device=device).view(1, 3, 1, 1)

  def __call__(self, idx: torch.Tensor):
    idx = idx.to(self.device)
    x = self.images[idx].permute(0, 3, 1, 2).float().div_(255)
    x = (x - self.mean) / self.std
    b, p, dev = x.shape[0], self.padding, self.device
    x = F.pad(x, (p, p, p, p))
    dy, dx = torch.randint(0, 2 * p + 1, (2, b), device=dev)
    rows = (dy[:, None] + torch.arange(32, device=dev))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(32, device=dev))[:, None, None, :]
    x = x[torch.arange(b, device=dev)[:, None, None, None],
          torch.arange(3, device=dev)[None, :, None, None], rows, cols]
    flip = torch.rand(b, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous(), self.labels[idx], idx


class _AugmentedSet(torch.utils.data.Dataset):
  """One example, augmented on the CPU in a loader worker (what torchvision's RandomCrop(32,
  padding=4) + RandomHorizontalFlip + Normalize do), with its index (CRD needs it)."""

  def __init__(self, images: torch.Tensor, labels: torch.Tensor, padding: int):
    self.images, self.labels, self.padding = images.numpy(), labels, padding
    self.mean = np.asarray(MEAN, np.float32)[:, None, None]
    self.std = np.asarray(STD, np.float32)[:, None, None]

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, i: int):
    p = self.padding
    x = np.pad(self.images[i], ((p, p), (p, p), (0, 0)))
    dy, dx = np.random.randint(0, 2 * p + 1, 2)
    x = x[dy:dy + 32, dx:dx + 32]
    if np.random.rand() < 0.5:
      x = x[:, ::-1]
    x = (x.transpose(2, 0, 1).astype(np.float32) / 255 - self.mean) / self.std
    return torch.from_numpy(x), self.labels[i], i


class LoaderFeed:
  """The official recipes' input path: a ``DataLoader`` (shuffled, ``workers`` processes
  augmenting on the CPU, pinned memory on CUDA) whose batches are copied to ``device``;
  ``feed(idx) -> (x, y, idx)`` ignores ``idx`` and returns the loader's next batch."""

  def __init__(self, num_train: int, num_classes: int, batch: int, workers: int,
               device: str = 'cpu', seed: int = 0, padding: int = 4):
    images, labels = synthetic_set(num_train, num_classes, seed)
    self.device = device
    self.loader = torch.utils.data.DataLoader(
        _AugmentedSet(images, labels, padding), batch_size=batch, shuffle=True,
        num_workers=workers, pin_memory=device.startswith('cuda'), drop_last=True,
        persistent_workers=workers > 0,
        # spawned, not forked: the benchmark process already runs JAX's threads, and a
        # fork of a multithreaded process can deadlock
        multiprocessing_context='spawn' if workers > 0 else None)
    self._it = iter(self.loader)
    self.images = images  # its size sizes CRD's memories

  def __call__(self, idx: torch.Tensor | None = None):
    try:
      x, y, i = next(self._it)
    except StopIteration:
      self._it = iter(self.loader)
      x, y, i = next(self._it)
    put = lambda t: t.to(self.device, non_blocking=True)
    return put(x), put(y), put(i)


# ---------------------------------------------------------------- losses (methods.md)

def kl_t(z_s, z_t, t: float):
  return F.kl_div(F.log_softmax(z_s / t, 1), F.softmax(z_t / t, 1), reduction='batchmean') * t * t


def l2n(x, eps: float = 0.0):
  n = x.pow(2).sum(1, keepdim=True).sqrt()
  return x / (n.clamp_min(eps) if eps else n)


class CRD(nn.Module):
  """Embeds + two per-example memories, uniform negatives, NCE both ways (§2 CRD)."""

  def __init__(self, d_s: int, d_t: int, n_data: int, dim: int = 128, k: int = 16384,
               t: float = 0.07, momentum: float = 0.5):
    super().__init__()
    self.embed_s, self.embed_t = nn.Linear(d_s, dim), nn.Linear(d_t, dim)
    stdv = 1.0 / math.sqrt(dim / 3)
    self.register_buffer('mem_s', torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
    self.register_buffer('mem_t', torch.rand(n_data, dim).mul_(2 * stdv).add_(-stdv))
    self.n_data, self.k, self.t, self.momentum = n_data, k, t, momentum
    self.z_s = self.z_t = None

  def _nce(self, x):
    m_pn = self.k / self.n_data
    pos, neg = x[:, 0], x[:, 1:]
    return -(torch.log(pos / (pos + m_pn + 1e-7)).sum()
             + torch.log(m_pn / (neg + m_pn + 1e-7)).sum()) / x.shape[0]

  def forward(self, f_s, f_t, idx):
    v_s, v_t = l2n(self.embed_s(f_s)), l2n(self.embed_t(f_t))
    negatives = torch.randint(0, self.n_data, (idx.shape[0], self.k), device=idx.device)
    cidx = torch.cat([idx[:, None], negatives], 1)
    out_s = torch.exp(torch.bmm(self.mem_t[cidx], v_s[:, :, None])[..., 0] / self.t)
    out_t = torch.exp(torch.bmm(self.mem_s[cidx], v_t[:, :, None])[..., 0] / self.t)
    if self.z_s is None:
      self.z_s = (out_s.mean() * self.n_data).detach()
      self.z_t = (out_t.mean() * self.n_data).detach()
    loss = self._nce(out_s / self.z_s) + self._nce(out_t / self.z_t)
    with torch.no_grad():
      self.mem_s[idx] = l2n(self.mem_s[idx] * self.momentum + v_s.detach() * (1 - self.momentum))
      self.mem_t[idx] = l2n(self.mem_t[idx] * self.momentum + v_t.detach() * (1 - self.momentum))
    return loss


class ICD(nn.Module):
  """Two projection heads, learnable scale/bias, CE over the B x B logits + invariance KL (§4)."""

  def __init__(self, d_s: int, d_t: int, dim: int = 128, alpha_inv: float = 0.5,
               max_scale: float = 10.0):
    super().__init__()
    self.embed_s, self.embed_t = nn.Linear(d_s, dim), nn.Linear(d_t, dim)
    self.log_scale = nn.Parameter(torch.tensor(1.0))
    self.bias = nn.Parameter(torch.tensor(0.0))
    self.alpha_inv, self.max_scale = alpha_inv, max_scale

  def forward(self, f_s, f_t):
    e_s, e_t = l2n(self.embed_s(f_s), 1e-12), l2n(self.embed_t(f_t), 1e-12)
    s = self.log_scale.exp().clamp(0, self.max_scale) * e_s @ e_t.T + self.bias
    log_p1 = F.log_softmax(s, 1)
    con = F.cross_entropy(s, torch.arange(s.shape[0], device=s.device))
    inv = F.kl_div(log_p1, F.softmax(s, 0).T, reduction='batchmean')
    return con + self.alpha_inv * inv


class CID(nn.Module):
  """Sample regressor, class Gram loss, context dictionary and interventional head (§3),
  timed in phase 2 (the dictionary built: epochs 21-240, what most of a run costs)."""

  def __init__(self, d_s: int, d_t: int, num_classes: int, t: float = 4.0, b: float = 65.0,
               c: float = 1.0):
    super().__init__()
    self.reg = nn.Linear(d_s, d_t)
    self.head = nn.Linear(2 * d_s, num_classes)
    self.register_buffer('dictionary', torch.randn(num_classes, d_s))
    self.register_buffer('acc_sum', torch.zeros(num_classes, d_s))
    self.register_buffer('acc_w', torch.zeros(num_classes))
    self.t, self.b, self.c, self.num_classes = t, b, c, num_classes

  def forward(self, z_s, z_t, f_s, f_t, y):
    sample = ((self.reg(f_s) - f_t).pow(2).sum(1) / f_t.pow(2).sum(1)).mean()
    fs, ft = l2n(f_s, 1e-12), l2n(f_t, 1e-12)
    diff = (ft @ ft.T - fs @ fs.T).pow(2)
    same = y[:, None] == y[None, :]
    counts = torch.bincount(y, minlength=self.num_classes).float()
    n_row = counts[y]
    row = torch.where(n_row >= 2, (diff * same).sum(1) / n_row.pow(2), torch.zeros_like(n_row))
    n_q = (counts >= 2).sum()
    cls = row.sum() / n_q.clamp_min(1)
    p = F.softmax(z_s.detach() / self.t, 1)
    z_do = self.head(torch.cat([f_s, p @ self.dictionary], 1))
    with torch.no_grad():
      w = F.softmax(z_t / self.t, 1).gather(1, y[:, None])[:, 0]
      self.acc_sum.index_add_(0, y, w[:, None] * f_s.detach())
      self.acc_w.index_add_(0, y, w)
    return F.cross_entropy(z_do, y) + kl_t(z_s, z_t, self.t) + self.b * sample + self.c * cls


# ---------------------------------------------------------------- steps

def build_step(method: str, student_name: str, teacher_name: str | None, num_classes: int,
               data: Augment | LoaderFeed, weights: dict[str, float], device: str = 'cpu'
               ) -> Callable[[torch.Tensor], float]:
  """``step(idx)``: one train step of ``method`` ('train' = CE without a teacher) on the
  batch ``data(idx)`` gives, finished on the device when it returns."""
  student = create_model(student_name, num_classes).train().to(device)
  teacher = (create_model(teacher_name, num_classes).eval().to(device)
             if method != 'train' else None)
  if teacher is not None:
    for p in teacher.parameters():
      p.requires_grad_(False)
  probe = torch.zeros(2, 3, 32, 32, device=device)
  with torch.no_grad():
    d_s = student.eval()(probe)[1][-1].shape[1]
    d_t = teacher(probe)[1][-1].shape[1] if teacher is not None else 0
  student.train()
  extra = None
  if method == 'crd':
    extra = CRD(d_s, d_t, data.images.shape[0])
  elif method == 'icd':
    extra = ICD(d_s, d_t)
  elif method == 'cid':
    extra = CID(d_s, d_t, num_classes)
  if extra is not None:
    extra.to(device)
  params = list(student.parameters()) + (list(extra.parameters()) if extra is not None else [])
  opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4,
                        nesterov=method == 'cid')
  gamma, alpha, beta, t = (weights.get(k, d) for k, d in
                           (('gamma', 1.0), ('alpha', 0.0), ('beta', 0.0), ('temperature', 4.0)))

  def step(idx: torch.Tensor) -> float:
    x, y, idx = data(idx)
    z_t = f_t = None
    if teacher is not None:
      with torch.no_grad():
        z_t, feats_t = teacher(x)
        f_t = feats_t[-1]
    z_s, feats_s = student(x)
    f_s = feats_s[-1]
    if method == 'cid':
      loss = extra(z_s, z_t, f_s, f_t, y)
    else:
      loss = gamma * F.cross_entropy(z_s, y)
      if alpha and z_t is not None:
        loss = loss + alpha * kl_t(z_s, z_t, t)
      if method == 'crd':
        loss = loss + beta * extra(f_s, f_t, idx)
      elif method == 'icd':
        loss = loss + beta * extra(f_s, f_t)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    synchronize(device)
    return loss

  return step


def build_forward(name: str, num_classes: int, batch: int, device: str = 'cpu'
                  ) -> Callable[[], torch.Tensor]:
  """Eval-mode forward under ``no_grad`` of a fixed normalised batch."""
  model = create_model(name, num_classes).eval().to(device)
  x = torch.randn(batch, 3, 32, 32, device=device)

  def fwd():
    with torch.no_grad():
      out = model(x)[0]
    synchronize(device)
    return out

  return fwd


def build_forward_backward(name: str, num_classes: int, batch: int, device: str = 'cpu'
                           ) -> Callable[[], None]:
  """Train-mode forward + backward of CE on a fixed batch (no optimizer update)."""
  model = create_model(name, num_classes).train().to(device)
  x = torch.randn(batch, 3, 32, 32, device=device)
  y = torch.randint(0, num_classes, (batch,), device=device)

  def fwd_bwd():
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x)[0], y).backward()
    synchronize(device)

  return fwd_bwd
