"""ImageNet models against torch references written here from torchvision's published
architectures (torchvision itself is not a dependency): a state dict with random weights
and random BatchNorm statistics, built in torch, goes through the converter and the
forwards must agree (eval and train-mode BatchNorm)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kdjax.models.torch_import import convert_state_dict

torch = pytest.importorskip('torch',
                            reason='the torch references need the optional extra kdjax[torch]')
tnn = torch.nn


# --- torch references (torchvision layout) --------------------------------------------

class TBasic(tnn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.relu = tnn.ReLU()
    self.downsample = None
    if stride != 1 or cin != planes:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, planes, 1, stride, bias=False),
                                       tnn.BatchNorm2d(planes))

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    idt = x if self.downsample is None else self.downsample(x)
    return self.relu(out + idt)


class TBottleneck(tnn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride):
    super().__init__()
    out = planes * 4
    self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # v1.5: stride here
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(out)
    self.relu = tnn.ReLU()
    self.downsample = None
    if stride != 1 or cin != out:
      self.downsample = tnn.Sequential(tnn.Conv2d(cin, out, 1, stride, bias=False),
                                       tnn.BatchNorm2d(out))

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    idt = x if self.downsample is None else self.downsample(x)
    return self.relu(out + idt)


class TResNet(tnn.Module):
  def __init__(self, block, layers, num_classes):
    super().__init__()
    self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = tnn.BatchNorm2d(64)
    self.relu = tnn.ReLU()
    self.maxpool = tnn.MaxPool2d(3, 2, 1)
    cin = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers), start=1):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, planes, (1 if i == 1 else 2) if j == 0 else 1))
        cin = planes * block.expansion
      setattr(self, f'layer{i}', tnn.Sequential(*blocks))
    self.avgpool = tnn.AdaptiveAvgPool2d(1)
    self.fc = tnn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    feats = [x]
    x = self.maxpool(x)
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
      feats.append(x)
    pooled = torch.flatten(self.avgpool(x), 1)
    return self.fc(pooled), feats + [pooled]


def _v1_conv_bn(cin, cout, stride):
  return tnn.Sequential(tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout),
                        tnn.ReLU(inplace=True))


def _v1_conv_dw(cin, cout, stride):
  return tnn.Sequential(
      tnn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), tnn.BatchNorm2d(cin),
      tnn.ReLU(inplace=True),
      tnn.Conv2d(cin, cout, 1, 1, 0, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU(inplace=True))


class TMobileNetV1(tnn.Module):
  def __init__(self, num_classes):
    super().__init__()
    cfg = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
           (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
    self.model = tnn.Sequential(_v1_conv_bn(3, 32, 2), *[_v1_conv_dw(*c) for c in cfg])
    self.fc = tnn.Linear(1024, num_classes)

  def forward(self, x):
    feats = []
    for i, m in enumerate(self.model):
      x = m(x)
      if i in (3, 5, 11, 13):
        feats.append(x)
    pooled = x.mean((2, 3))
    return self.fc(pooled), feats + [pooled]


def _v2_cbr(cin, cout, k, stride, groups=1):
  return tnn.Sequential(tnn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                        tnn.BatchNorm2d(cout), tnn.ReLU6(inplace=True))


class TInvertedResidual(tnn.Module):
  def __init__(self, cin, cout, stride, t):
    super().__init__()
    hidden = cin * t
    self.use_res = stride == 1 and cin == cout
    layers = [] if t == 1 else [_v2_cbr(cin, hidden, 1, 1)]
    layers += [_v2_cbr(hidden, hidden, 3, stride, groups=hidden),
               tnn.Conv2d(hidden, cout, 1, 1, 0, bias=False), tnn.BatchNorm2d(cout)]
    self.conv = tnn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res else self.conv(x)


class TMobileNetV2(tnn.Module):
  def __init__(self, num_classes):
    super().__init__()
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, cin = [_v2_cbr(3, 32, 3, 2)], 32
    for t, c, n, s in settings:
      for i in range(n):
        layers.append(TInvertedResidual(cin, c, s if i == 0 else 1, t))
        cin = c
    layers.append(_v2_cbr(cin, 1280, 1, 1))
    self.features = tnn.Sequential(*layers)
    self.classifier = tnn.Sequential(tnn.Dropout(0.2), tnn.Linear(1280, num_classes))

  def forward(self, x):
    feats = []
    for i, m in enumerate(self.features):
      x = m(x)
      if i in (3, 6, 13, 18):
        feats.append(x)
    pooled = x.mean((2, 3))
    return self.classifier(pooled), feats + [pooled]


REFERENCES = {
    'imagenet_resnet18': lambda n: TResNet(TBasic, (2, 2, 2, 2), n),
    'imagenet_resnet34': lambda n: TResNet(TBasic, (3, 4, 6, 3), n),
    'imagenet_resnet50': lambda n: TResNet(TBottleneck, (3, 4, 6, 3), n),
    'imagenet_mobilenetv1': TMobileNetV1,
    'imagenet_mobilenetv2': TMobileNetV2,
}
# torchvision's published parameter counts (1000 classes) for the ResNets and MobileNetV2;
# MobileNetV1's 4.23M is the paper's (Howard et al. 2017, Table 8: 4.2M).
PARAMS_1000 = {'imagenet_resnet18': 11_689_512, 'imagenet_resnet34': 21_797_672,
               'imagenet_resnet50': 25_557_032, 'imagenet_mobilenetv2': 3_504_872,
               'imagenet_mobilenetv1': 4_231_976}


def _randomised(name: str, num_classes: int):
  torch.manual_seed(0)
  ref = REFERENCES[name](num_classes)
  with torch.no_grad():  # non-trivial BN statistics and affine so eval mode is tested
    for m in ref.modules():
      if isinstance(m, tnn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  return ref


@pytest.mark.parametrize('name', sorted(REFERENCES))
def test_torchvision_layout_state_dict_converts_and_forwards_match(name):
  num_classes, size = 7, 64
  ref = _randomised(name, num_classes).eval()
  sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  model, variables = convert_state_dict(name, sd, num_classes, image_size=size)
  x = np.random.default_rng(0).normal(size=(2, 3, size, size)).astype(np.float32)
  with torch.no_grad():
    t_logits, t_feats = ref(torch.from_numpy(x))
  logits, feats = jax.jit(lambda v, x: model.apply(v, x, train=False))(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert len(feats) == len(t_feats)
  for f, tf in zip(feats, t_feats):
    tf = tf.numpy()
    np.testing.assert_allclose(f, tf.transpose(0, 2, 3, 1) if tf.ndim == 4 else tf,
                               rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(logits, t_logits.numpy(), rtol=1e-4, atol=1e-4)


def test_train_mode_batchnorm_matches_torch():
  name, num_classes, size = 'imagenet_resnet18', 5, 64
  ref = _randomised(name, num_classes)
  sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  model, variables = convert_state_dict(name, sd, num_classes, image_size=size)
  x = np.random.default_rng(1).normal(size=(4, 3, size, size)).astype(np.float32)
  ref.train()
  with torch.no_grad():
    t_logits, _ = ref(torch.from_numpy(x))
  (logits, _), updates = model.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)),
                                     train=True, mutable=['batch_stats'])
  np.testing.assert_allclose(logits, t_logits.numpy(), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(updates['batch_stats']['layer2_0']['downsample_1']['var'],
                             ref.layer2[0].downsample[1].running_var.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('name', sorted(PARAMS_1000))
def test_parameter_counts_match_torchvision(name):
  ref = REFERENCES[name](1000)
  # trainable parameters only (torch counts BN affine, not running statistics)
  assert sum(p.numel() for p in ref.parameters()) == PARAMS_1000[name]
  model, variables = convert_state_dict(
      name, {k: v.detach().numpy() for k, v in ref.state_dict().items()}, 1000, image_size=32)
  assert sum(v.size for v in jax.tree.leaves(variables['params'])) == PARAMS_1000[name]


def test_max_pool_is_differentiable_under_jit():
  """The stem's max-pool (and VGG's) inside the jitted train step needs its gradient."""
  from kdjax.models.layers import max_pool
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 9, 3)), jnp.float32)
  grad = jax.jit(jax.grad(lambda x: max_pool(x, 3, 2, padding=1).sum()))(x)
  # each output window's maximum gets its gradient; torch pools the same windows
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2)).requires_grad_()
  torch.nn.functional.max_pool2d(xt, 3, 2, 1).sum().backward()
  np.testing.assert_allclose(grad, xt.grad.numpy().transpose(0, 2, 3, 1))
