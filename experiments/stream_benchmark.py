"""Images/second of the streaming input pipeline on this host.

  python experiments/stream_benchmark.py                       # ImageNet-sized JPEGs, 224 crops
  python experiments/stream_benchmark.py --width 64 --height 64 --size 64   # Tiny-ImageNet

Writes ``--images`` JPEGs of ``--width`` x ``--height`` (smooth random content plus
noise, so they compress like photographs: about 60-110 KB at 500x375) into a temporary
image folder, then times, for the train transform (random-resized crop) and the eval
transform (resize + centre crop), with each worker count: ``host`` = the feed's grain
pipeline alone (read + decode + crop + resize, batches on the host), ``feed`` = the
whole streaming feed (``StreamingFeed.epoch_inputs``: the above plus the transfer to the
devices, one batch per call), and ``decode`` = PIL's decode alone in one thread. Each
figure is the best of ``--repeats`` passes over all images (the machine may be shared).
BENCHMARK INPUTS, not a dataset.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, provenance, write_result  # noqa: E402

sys.path.insert(0, ROOT)  # this checkout's kdjax, whatever is installed

from kdjax.config import base_config  # noqa: E402
from kdjax.data import streaming  # noqa: E402
from kdjax.train.mesh import make_mesh  # noqa: E402
from kdjax.train.stream_feed import StreamingFeed  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--images', type=int, default=256)
  p.add_argument('--width', type=int, default=500, help='ImageNet averages about 400 x 350')
  p.add_argument('--height', type=int, default=375)
  p.add_argument('--size', type=int, default=224, help='crop size S')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--workers', default='1,2,4', help='comma list of decode threads')
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--out', default='', help='default results/stream_<platform>.json')
  return p.parse_args(argv)


def write_jpegs(root: str, n: int, width: int, height: int) -> float:
  """Returns the mean file size in KB."""
  from PIL import Image
  rng = np.random.default_rng(0)
  sizes = []
  for i in range(n):
    folder = os.path.join(root, 'train' if i % 4 else 'val', f'class_{i % 2}')
    os.makedirs(folder, exist_ok=True)
    low = Image.fromarray(rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8))
    img = np.asarray(low.resize((width, height), Image.BICUBIC), np.float32)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    path = os.path.join(folder, f'{i:05d}.JPEG')
    Image.fromarray(img).save(path, quality=90)
    sizes.append(os.path.getsize(path))
  # the val folder is only there for the layout; the timing reads the train files
  return float(np.mean(sizes)) / 1024


def _best(fn, repeats: int) -> float:
  return min(fn() for _ in range(repeats))


def main(argv: list[str] | None = None) -> dict:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  mesh = make_mesh()
  rows = []
  with tempfile.TemporaryDirectory() as root:
    kb = write_jpegs(root, args.images * 4 // 3 + 4, args.width, args.height)
    c = base_config()
    c.data.pipeline, c.data.source, c.data.name, c.data.path = 'streaming', 'folder', 'bench', root
    c.data.image_size = args.size
    files = streaming.image_folder(root, 'train')
    n = len(files) // args.batch * args.batch
    flat = np.random.default_rng(0).permutation(len(files))[:n].astype(np.int32)

    from PIL import Image
    import io

    def decode_only() -> float:
      t = time.perf_counter()
      for i in flat:
        Image.open(io.BytesIO(files[int(i)][0])).convert('RGB').load()
      return time.perf_counter() - t

    rows.append({'transform': 'decode only', 'stage': 'decode', 'workers': 1,
                 'images_per_second': n / _best(decode_only, args.repeats)})
    for split_name in ('train', 'test'):
      split = streaming.load_streaming(c.data, split_name, 0)
      split = streaming.StreamingSplit(files, split.transform, split.num_classes, split.mean,
                                       split.std, split.name, 0, files.labels)
      label = 'train: random-resized crop' if split_name == 'train' else (
          'eval: resize + centre crop')
      for workers in (int(w) for w in args.workers.split(',')):
        feed = StreamingFeed(split, mesh, workers=workers)

        def host() -> float:
          t = time.perf_counter()
          for _ in feed._examples(flat, 0, None, args.batch):  # pylint: disable=protected-access
            pass
          return time.perf_counter() - t

        def full() -> float:
          t = time.perf_counter()
          for images, _, _ in feed.epoch_inputs(0, flat.reshape(-1, 1, args.batch)):
            images.block_until_ready()
          return time.perf_counter() - t

        for stage, fn in (('host', host), ('feed', full)):
          rows.append({'transform': label, 'stage': stage, 'workers': workers,
                       'images_per_second': n / _best(fn, args.repeats)})
          print(rows[-1], flush=True)
  result = {'provenance': provenance('experiments/stream_benchmark.py', argv),
            'cpu_count': os.cpu_count(), 'images': int(n), 'jpeg_kb': kb,
            'image': f'{args.width}x{args.height}', 'crop': args.size, 'batch': args.batch,
            'rows': rows}
  out = args.out or os.path.join(ROOT, 'results', f'stream_{jax.devices()[0].platform}.json')
  write_result(out, result, markdown(result))
  return result


def markdown(result: dict) -> str:
  p = result['provenance']
  lines = [f"# Streaming pipeline throughput ({p['devices']}, {result['cpu_count']} CPU cores)", '',
           f"`{p['command']}` at commit {p['git_commit']}, {p['date']}. {result['images']} "
           f"JPEGs of {result['image']} ({result['jpeg_kb']:.0f} KB mean), crop "
           f"{result['crop']}, batch {result['batch']}; benchmark inputs, not a dataset.", '',
           '| transform | stage | workers | images/s |', '|---|---|---:|---:|']
  for r in result['rows']:
    lines.append(f"| {r['transform']} | {r['stage']} | {r['workers']} | "
                 f"{r['images_per_second']:.0f} |")
  return '\n'.join(lines) + '\n'


if __name__ == '__main__':
  main()
