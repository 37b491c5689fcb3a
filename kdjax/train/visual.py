"""Pictures of a data-free run: synthetic image grids and the pool's class histogram."""
from __future__ import annotations

import os

import numpy as np


def image_grid(images: np.ndarray, columns: int = 0) -> np.ndarray:
  """(N, H, W, C) uint8 -> one (rows*(H+1)-1, cols*(W+1)-1, C) uint8 mosaic, 1-pixel gaps."""
  n, h, w, c = images.shape
  cols = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / cols))
  grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1, c), 255, np.uint8)
  for i, img in enumerate(images):
    r, q = divmod(i, cols)
    grid[r * (h + 1):r * (h + 1) + h, q * (w + 1):q * (w + 1) + w] = img
  return grid


def save_grid(path: str, images: np.ndarray) -> str:
  from PIL import Image
  os.makedirs(os.path.dirname(path), exist_ok=True)
  grid = image_grid(images)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return path


def plot_distributions(path: str, panels: dict[str, np.ndarray], title: str) -> str:
  """Bar charts side by side, e.g. the pool's class histogram next to KDCI's prior."""
  from matplotlib.figure import Figure  # the object API: no process-wide backend switch
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fig = Figure(figsize=(5.5 * len(panels), 3.2))
  for ax, (name, p) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
    ax.bar(np.arange(len(p)), p, width=1.0)
    ax.axhline(1.0 / max(len(p), 1), color='k', lw=0.8, ls='--', label='uniform')
    ax.set(title=name, xlabel='index', ylabel='fraction')
    ax.legend(loc='upper right')
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  return path
