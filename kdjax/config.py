"""The configuration schema and the checks run before any expensive work.

Every experiment config starts from ``base_config()`` and changes values; a key that
the base does not have, or a value of another type, is a user error reported in one
line that names the key and what is accepted.
"""
from __future__ import annotations

import difflib
import math
import os
from typing import Any

import jax
import ml_collections

from kdjax.errors import ConfigError

MODES = ('train', 'distill', 'evaluate', 'pipeline', 'transfer', 'datafree')
FEEDS = ('auto', 'device', 'host')
PIPELINES = ('memory', 'streaming')
SCHEDULES = ('multistep', 'cosine', 'constant')
DTYPES = ('float32', 'bfloat16')


def base_config() -> ml_collections.ConfigDict:
  """Every key kdjax understands, with the CIFAR-100 protocol (methods.md §1) as defaults."""
  from kdjax import datafree, methods  # registries of method / synthesizer sub-configs

  c = ml_collections.ConfigDict()
  c.mode = 'distill'
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = 'cifar100'
  c.data.source = 'auto'         # auto | builtin | archive | tfds | fake
  c.data.path = ''               # archive file / extracted folder, or tfds data_dir
  c.data.image_size = 32
  c.data.crop_padding = 4        # 0 disables random crops
  c.data.flip = True
  # the last partial training batch: kept (False, RepDistiller / CID) as one more step of
  # its own shape, trimmed to a multiple of the device count; True drops it (ICD's code)
  c.data.drop_last = False
  c.data.fake_examples = 512     # only for data.source = fake (tests)
  c.data.fake_classes = 10
  c.data.train_examples = 0      # 0 = the whole train split; N = a fixed random N of it
  # device: the train split lives on the devices, batches gathered there by index;
  # host: each process gathers its rows of every batch on the host and sends them;
  # auto: device with one process, host with several
  c.data.feed = 'auto'
  # memory: whole splits as arrays (above); streaming: examples read, decoded and cropped
  # on the hosts in parallel workers (kdjax.data.streaming; sources folder,
  # tiny_imagenet, tfds), for datasets larger than memory
  c.data.pipeline = 'memory'
  c.data.train_crop = 'random_resized'  # streaming train crop: random_resized | resize
  c.data.min_crop_scale = 0.08   # smallest area fraction of a random-resized crop
  c.data.eval_crop_fraction = 0.875  # streaming eval: centre crop of the resized image (224/256)
  c.data.workers = 0             # streaming decode threads per process; 0 = CPU count
  c.data.prefetch = 0            # streaming examples decoded ahead; 0 = two calls' worth
  c.data.manual_dir = ''         # tfds manual-download dir (imagenet2012's tars)

  c.model = ml_collections.ConfigDict()
  c.model.name = 'resnet8x4'     # the model being trained (student in distill mode)
  c.model.dtype = 'float32'      # compute dtype; params stay float32

  c.teacher = ml_collections.ConfigDict()
  c.teacher.model = ''           # '' = take it from the checkpoint's metadata
  c.teacher.checkpoint = ''      # exported model dir, or a kdjax workdir

  c.method = ml_collections.ConfigDict()
  c.method.name = 'kd'
  c.method.gamma = 0.1           # weight of CE(z_s, y)
  c.method.alpha = 0.9           # weight of KL_T(z_s || z_t)
  c.method.beta = 0.0            # weight of the method's own term
  c.method.temperature = 4.0
  for name in methods.method_names():
    sub = methods.get_method(name).default_config()
    if len(sub):
      c.method[name] = sub
  c.method.kdci = methods.kdci_config()  # KDCI wraps config.method.name when enabled

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 0.05
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4    # coupled (added to the gradient), as torch SGD
  c.optim.schedule = 'multistep'
  c.optim.milestones = (150, 180, 210)
  c.optim.decay_rate = 0.1
  c.optim.min_lr = 0.0           # cosine: the final learning rate (eta_min)

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 240
  c.train.batch_size = 64        # global batch, split over devices
  c.train.eval_batch_size = 256
  # steps fused in one jitted scan; 0 = auto (1 on CPU or when streaming, 100 else)
  c.train.steps_per_call = 0
  c.train.eval_every = 1         # epochs
  c.train.progress = True
  c.train.max_skipped_steps = 0  # steps with a non-finite loss skipped before stopping

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.keep = 2          # last N checkpoints, plus the best one
  c.checkpoint.every = 1         # epochs

  c.evaluate = ml_collections.ConfigDict()
  c.evaluate.checkpoint = ''     # for mode=evaluate: exported model dir or workdir
  c.evaluate.split = 'test'

  # mode=transfer: a linear head on the frozen backbone of `checkpoint`, trained on `data`
  # (the target dataset); model.name is the checkpoint's, whatever the config says
  c.transfer = ml_collections.ConfigDict()
  c.transfer.checkpoint = ''     # exported model dir, or a kdjax workdir
  c.transfer.backbone_bn = 'adapt'     # 'adapt': BN in train mode on the target data; 'frozen'
  c.transfer.normalization = 'target'  # 'target' dataset's statistics, or the 'backbone''s
  c.transfer.low_lr = 0.0        # > 0: optim.lr for MobileNetV2 / ShuffleV1 / ShuffleV2 backbones

  # mode=datafree: the student never sees a training image; rounds of synthesis from the
  # teacher (datafree.method) then student steps on the synthetic pool (methods.md §5)
  c.datafree = ml_collections.ConfigDict()
  c.datafree.method = 'fast'         # dafl | deepinv | cmi | fast
  c.datafree.synthesis_batch_size = 0   # images per round; 0 = train.batch_size
  c.datafree.kd_steps = 0            # student steps after each round; 0 = ep_steps (one round
                                     # per epoch, as the reference runs all but DAFL)
  c.datafree.ep_steps = 400          # student steps per epoch (ep_steps // kd_steps rounds)
  c.datafree.warmup = 0              # epochs of synthesis only, before the student trains
  c.datafree.pool_capacity = 65536   # images kept (ring buffer; DAFL keeps one round's)
  c.datafree.steps_per_call = 0      # inner synthesis steps per compiled call; 0 = automatic
  c.datafree.nz = 256                # generator latent size
  c.datafree.ngf = 64
  c.datafree.eval_split = 'test'     # the only split a data-free run reads
  c.datafree.grid = 64               # synthetic images drawn in each epoch's PNG grid
  for name in datafree.synthesizer_names():
    c.datafree[name] = datafree.get_synthesizer(name).default_config()

  # mode=pipeline: teacher (CE) -> student (method) -> student from scratch (CE)
  c.pipeline = ml_collections.ConfigDict()
  c.pipeline.teacher_model = 'resnet20'
  c.pipeline.teacher_epochs = 10
  c.pipeline.baseline = True
  # the student and the baseline learn from this many training examples (0 = as the
  # teacher, data.train_examples): where labels are scarce a teacher's soft targets
  # carry the most, which is what the default demo shows
  c.pipeline.student_examples = 0

  # several processes (hosts) training one model: start the same command on each with its
  # own process_id; jax.distributed connects them through the coordinator
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False
  c.distributed.coordinator = ''     # host:port of process 0, e.g. 'localhost:12345'
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  c.distributed.timeout = 300        # seconds to wait for every process to join
  return c


def _type_name(value: Any) -> str:
  return type(value).__name__


def _compatible(default: Any, value: Any) -> bool:
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, float):
    return isinstance(value, (int, float))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def _check_schema(config: ml_collections.ConfigDict, schema: ml_collections.ConfigDict,
                  prefix: str = '') -> None:
  for key in config.keys():
    full = prefix + key
    if key not in schema:
      close = difflib.get_close_matches(key, list(schema.keys()), n=1)
      hint = f"; did you mean '{prefix}{close[0]}'?" if close else (
          f"; accepted keys under '{prefix or 'config'}': {', '.join(sorted(schema.keys()))}")
      raise ConfigError(f"unknown config key '{full}'{hint}")
    value, default = config[key], schema[key]
    if isinstance(default, ml_collections.ConfigDict):
      if not isinstance(value, ml_collections.ConfigDict):
        raise ConfigError(f"config key '{full}' must be a group of keys, got {_type_name(value)}")
      _check_schema(value, default, full + '.')
    elif not _compatible(default, value):
      raise ConfigError(f"config key '{full}' must be {_type_name(default)}, "
                        f"got {_type_name(value)} {value!r}")


def _one_of(key: str, value: str, accepted: Any) -> None:
  if value not in accepted:
    raise ConfigError(f"config key '{key}' is {value!r}; accepted: {', '.join(accepted)}")


# (keys, test, what is accepted): numbers outside these ranges are mistakes
_RANGES = (
    (('train.epochs', 'train.batch_size', 'train.eval_batch_size', 'train.eval_every',
      'optim.lr', 'optim.decay_rate', 'checkpoint.keep', 'checkpoint.every',
      'method.temperature', 'data.image_size'), lambda v: v > 0, '> 0'),
    (('datafree.ep_steps', 'datafree.pool_capacity', 'datafree.nz',
      'datafree.ngf'), lambda v: v > 0, '> 0'),
    (('datafree.synthesis_batch_size', 'datafree.kd_steps', 'datafree.warmup',
      'datafree.steps_per_call',
      'datafree.grid', 'optim.min_lr'), lambda v: v >= 0, '>= 0'),
    (('data.crop_padding', 'optim.weight_decay', 'method.gamma', 'method.alpha',
      'method.beta', 'train.max_skipped_steps'), lambda v: v >= 0, '>= 0'),
    (('data.train_examples', 'pipeline.student_examples'), lambda v: v >= 0,
     '>= 0 (0 = the whole split)'),
    (('data.workers', 'data.prefetch'), lambda v: v >= 0, '>= 0 (0 = automatic)'),
    (('train.steps_per_call',), lambda v: v >= 0, '>= 0 (0 = automatic)'),
    (('optim.momentum',), lambda v: 0 <= v < 1, 'in [0, 1) (0 = plain SGD)'),
)


def _check_finite(config: ml_collections.ConfigDict, prefix: str = '') -> None:
  """inf or nan is never a meaningful setting (an lr of inf passes '> 0')."""
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      _check_finite(value, f'{prefix}{key}.')
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      if isinstance(v, float) and not math.isfinite(v):
        raise ConfigError(f"config key '{prefix}{key}' must be a finite number, got {value!r}")


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  _check_finite(config)
  for keys, ok, accepted in _RANGES:
    for key in keys:
      group, name = key.split('.')
      if not ok(config[group][name]):
        raise ConfigError(f"config key '{key}' must be {accepted}, got {config[group][name]!r}")


def validate_distributed(config: ml_collections.ConfigDict) -> None:
  """The ``distributed`` keys and the data feed, checked before JAX starts (a bad
  coordinator or process id would otherwise wait out the join timeout)."""
  _check_schema(config, base_config())
  _one_of('data.feed', config.data.feed, FEEDS)
  d = config.distributed
  if not d.enabled:
    return
  if not d.coordinator or ':' not in d.coordinator:
    raise ConfigError("config key 'distributed.coordinator' must be host:port of process 0 "
                      f"(e.g. 'localhost:12345'), got {d.coordinator!r}")
  if d.num_processes < 2:
    raise ConfigError("config key 'distributed.num_processes' must be >= 2 when "
                      f"distributed.enabled, got {d.num_processes}")
  if not 0 <= d.process_id < d.num_processes:
    raise ConfigError(f"config key 'distributed.process_id' = {d.process_id} is outside "
                      f"0..{d.num_processes - 1} (distributed.num_processes = {d.num_processes})")
  if d.timeout <= 0:
    raise ConfigError(f"config key 'distributed.timeout' must be > 0 seconds, got {d.timeout}")
  if config.data.feed == 'device':
    raise ConfigError("config key 'data.feed' = 'device' needs a single process (each "
                      "process must read only its rows); use 'host' or 'auto'")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for anything wrong that can be seen without training.

  Checks structure and types against ``base_config()``, names against the registries,
  the data source, the device split of the batch and the teacher checkpoint (its
  metadata and variable shapes, not its values). With several processes it needs
  ``jax.distributed`` initialised first: the device count is global.
  """
  from kdjax import methods, models
  from kdjax.data import DataError, check_source

  validate_distributed(config)
  _one_of('mode', config.mode, MODES)
  _one_of('model.name', config.model.name, models.model_names())
  _one_of('model.dtype', config.model.dtype, DTYPES)
  _one_of('method.name', config.method.name, methods.method_names())
  _one_of('optim.schedule', config.optim.schedule, SCHEDULES)
  _check_ranges(config)
  try:
    methods.validate_kdci(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  n_dev = jax.device_count()
  for key in ('train.batch_size', 'train.eval_batch_size'):
    group, name = key.split('.')
    if config[group][name] % n_dev:
      raise ConfigError(f"config key '{key}' = {config[group][name]} is not divisible by the "
                        f"{n_dev} devices; use a multiple of {n_dev}")
  m = list(config.optim.milestones)
  if any(b <= a for a, b in zip(m, m[1:])) or any(not isinstance(x, (int, float)) for x in m):
    raise ConfigError(f"config key 'optim.milestones' must be increasing epochs, got "
                      f"{tuple(config.optim.milestones)}")
  _one_of('data.pipeline', config.data.pipeline, PIPELINES)
  try:
    if config.data.pipeline == 'streaming':
      from kdjax.data.streaming import check_streaming
      check_streaming(config.data)
    else:
      check_source(config.data.name, config.data.source, config.data.path)
  except DataError as e:
    raise ConfigError(str(e)) from None

  known = _known_train_size(config)
  if known and config.mode in ('train', 'distill', 'pipeline', 'transfer') and (
      config.train.batch_size > known[0]):
    raise ConfigError(f"config key 'train.batch_size' = {config.train.batch_size} is larger "
                      f'than the {known[0]} training examples of {config.data.name}; use a '
                      'smaller batch')
  method = methods.get_method(config.method.name)
  teacher = None  # the teacher's module, for the method's checks
  if config.mode == 'pipeline':
    _one_of('pipeline.teacher_model', config.pipeline.teacher_model, models.model_names())
    teacher = models.create_model(config.pipeline.teacher_model, 10)
  if config.mode == 'datafree' or (config.mode == 'distill' and method.needs_teacher):
    if not config.teacher.checkpoint:
      raise ConfigError(f"method '{config.method.name}' needs a teacher: set "
                        "--config.teacher.checkpoint=PATH (an exported model or a kdjax workdir)")
    if config.teacher.model:
      _one_of('teacher.model', config.teacher.model, models.model_names())
    meta = _check_model_checkpoint('teacher.checkpoint', config.teacher.checkpoint,
                                   config.teacher.model)
    _check_teacher_data(config, meta)
    if known and meta['num_classes'] != known[1]:
      raise ConfigError(f"config key 'teacher.checkpoint': the teacher predicts "
                        f"{meta['num_classes']} classes but {config.data.name} has {known[1]}; "
                        'use a teacher trained on this dataset')
    from kdjax.train import export
    teacher = export.model_from_meta(meta)
  if config.mode in ('distill', 'pipeline', 'datafree'):
    from kdjax.methods.base import CheckContext, check_options
    size = config.data.image_size
    check_options(method, config.method, lambda: CheckContext(
        _feature_shapes(models.create_model(config.model.name, 10), size),
        _feature_shapes(teacher, size) if teacher is not None else None))
  if config.mode == 'evaluate':
    if not config.evaluate.checkpoint:
      raise ConfigError("mode 'evaluate' needs --config.evaluate.checkpoint=PATH "
                        "(an exported model or a kdjax workdir)")
    _check_model_checkpoint('evaluate.checkpoint', config.evaluate.checkpoint, '')
  if config.mode == 'transfer':
    _check_transfer(config)
  if config.mode == 'datafree':
    _check_datafree(config, meta)   # meta: the teacher export's, checked above


def _known_train_size(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  """(training examples the run uses, classes) when known without reading the data."""
  from kdjax.data.sources import known_size
  d = config.data
  if d.pipeline == 'streaming':
    return None
  size = known_size(d.name, d.fake_examples, d.fake_classes)
  if size is None:
    return None
  used = [size[0], d.train_examples or size[0]]
  if config.mode == 'pipeline' and config.pipeline.student_examples:  # the smallest stage
    used.append(config.pipeline.student_examples)
  return min(used), size[1]


def _check_datafree(config: ml_collections.ConfigDict, meta: dict[str, Any]) -> None:
  """A data-free run: the synthesizer and its options, the schedule of rounds, the pool's
  size against memory, and a teacher that can drive the chosen synthesis."""
  from kdjax import datafree
  d = config.datafree
  _one_of('datafree.method', d.method, datafree.synthesizer_names())
  if d.eval_split == 'train':
    raise ConfigError("config key 'datafree.eval_split' is 'train': a data-free run never reads "
                      "the training data; use 'test'")
  _one_of('datafree.eval_split', d.eval_split, ('test',))
  if d.kd_steps and d.ep_steps % d.kd_steps:
    raise ConfigError(f"config key 'datafree.ep_steps' = {d.ep_steps} must be a multiple of "
                      f"datafree.kd_steps = {d.kd_steps} (rounds per epoch = ep_steps // kd_steps)")
  if d.warmup >= config.train.epochs:
    raise ConfigError(f"config key 'datafree.warmup' = {d.warmup} leaves no epoch to train the "
                      f"student (train.epochs = {config.train.epochs})")
  syn_batch = d.synthesis_batch_size or config.train.batch_size
  if syn_batch % jax.device_count():
    raise ConfigError(f"config key 'datafree.synthesis_batch_size' = {syn_batch} is not "
                      f"divisible by the {jax.device_count()} devices")
  if d.pool_capacity < syn_batch:
    raise ConfigError(f"config key 'datafree.pool_capacity' = {d.pool_capacity} is smaller "
                      f"than one synthesis round ({syn_batch} images)")
  for key, value in d[d.method].items():
    full = f'datafree.{d.method}.{key}'
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      continue
    if not math.isfinite(value) or value < 0:
      raise ConfigError(f"config key '{full}' must be a finite number >= 0, got {value!r}")
    if (key == 'g_steps' or key.startswith('lr')) and value <= 0:
      raise ConfigError(f"config key '{full}' must be > 0, got {value!r}")
  problem = datafree.get_synthesizer(d.method).check_config(d[d.method])
  if problem:
    raise ConfigError(f"config key 'datafree.{d.method}.{problem}")
  size = config.data.image_size
  pool_bytes = d.pool_capacity * size * size * 3
  free = _available_memory()
  if free and pool_bytes > free // 2:
    raise ConfigError(
        f"config key 'datafree.pool_capacity' = {d.pool_capacity}: the pool needs "
        f"{pool_bytes / 2**30:.1f} GiB but {free / 2**30:.1f} GiB are available; use at most "
        f"{free // 2 // (size * size * 3)}")
  if datafree.uses_batchnorm(d) and not _teacher_has_batchnorm(meta, size):
    raise ConfigError(f"datafree.method '{d.method}' matches the teacher's BatchNorm statistics, "
                      f"but the teacher ({meta['model']}) has no BatchNorm layer; use "
                      "datafree.method=dafl or a teacher with BatchNorm")


def _available_memory() -> int:
  """Bytes free on the first device (accelerator memory, or the host's RAM on CPU)."""
  try:
    stats = jax.devices()[0].memory_stats() or {}
    if 'bytes_limit' in stats:
      return int(stats['bytes_limit'] - stats.get('bytes_in_use', 0))
  except Exception:  # noqa: BLE001 - backends without memory stats
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return 0


def _teacher_has_batchnorm(meta: dict[str, Any], image_size: int) -> bool:
  """Counted on abstract shapes: no weights are read, nothing is compiled."""
  from kdjax.models.capture import has_batchnorm
  from kdjax.train import export
  model = export.model_from_meta(meta)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jax.numpy.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)
  return has_batchnorm(model, variables, (1, image_size, image_size, 3))


def _feature_shapes(model: Any, image_size: int) -> tuple[tuple[int, ...], ...]:
  """The shapes of a model's feature list for one example (abstract: nothing is run)."""
  import jax.numpy as jnp
  x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)

  def feats(x):
    return model.apply(model.init(jax.random.key(0), x, train=False), x, train=False)[1]
  return tuple(tuple(f.shape) for f in jax.eval_shape(feats, x))


def _check_teacher_data(config: ml_collections.ConfigDict, meta: dict[str, Any]) -> None:
  """A teacher only means something on the data it was trained on, at its image size."""
  path = config.teacher.checkpoint
  size = meta.get('image_size')
  if size and size != config.data.image_size:
    raise ConfigError(f"config key 'data.image_size' is {config.data.image_size} but the "
                      f'teacher in {path} was trained on {size}x{size} images; use '
                      f'--config.data.image_size={size}')
  dataset = meta.get('dataset')
  if dataset and dataset != config.data.name:
    raise ConfigError(f"config key 'data.name' is {config.data.name!r} but the teacher in "
                      f'{path} was trained on {dataset!r}; distil on {dataset!r} or use a '
                      'teacher trained on this dataset')


def _check_transfer(config: ml_collections.ConfigDict) -> None:
  from kdjax.train import transfer
  _one_of('transfer.backbone_bn', config.transfer.backbone_bn, transfer.BACKBONE_BN)
  _one_of('transfer.normalization', config.transfer.normalization, transfer.NORMALIZATIONS)
  path = config.transfer.checkpoint
  if not path:
    raise ConfigError("mode 'transfer' needs --config.transfer.checkpoint=PATH (the model whose "
                      'frozen backbone is probed: an exported model or a kdjax workdir)')
  meta = _check_model_checkpoint('transfer.checkpoint', path, '')
  if meta.get('transfer'):
    raise ConfigError(f"config key 'transfer.checkpoint': {path} is itself a linear probe; "
                      'give the export of the model it probed')
  size = meta.get('image_size')
  if size and size != config.data.image_size:
    raise ConfigError(f"config key 'data.image_size' is {config.data.image_size} but the "
                      f'backbone in {path} was trained on {size}x{size} images; use '
                      f'--config.data.image_size={size}')


def _check_model_checkpoint(key: str, path: str, model_name: str) -> dict[str, Any]:
  """The export's metadata, once its metadata and variable shapes were checked."""
  from kdjax.train import export
  if not os.path.exists(path):
    raise ConfigError(f"config key '{key}': {path} does not exist")
  try:
    return export.check_exported(path, model_name)
  except export.ExportError as e:
    raise ConfigError(f"config key '{key}': {e}") from None
