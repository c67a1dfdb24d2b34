"""Overlapping tiles and their seamless blending, for native-resolution inference.

An image of any size is covered by square ``tile`` x ``tile`` windows (the model
size) that overlap by at least ``overlap`` pixels; the model runs on every tile
and the outputs are averaged with smooth weights. In each overlap the weight of
one tile ramps down along a raised cosine while its neighbour's ramps up over
exactly the same pixels, so the two weights sum to one and the result passes from
one tile's output to the next without a step (no seams in flat regions). Sides
on the image border are not ramped: only one tile covers those pixels. Images
smaller than a tile are padded by mirroring (bottom/right) and cropped back.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
  """Evenly spread start offsets of tiles covering ``length`` pixels.

  Uses the fewest tiles whose neighbours overlap by at least ``overlap``.
  """
  if not 0 <= overlap < tile:
    raise ValueError(f"overlap must be in [0, tile={tile}), got {overlap}")
  if length <= tile:
    return [0]
  n = math.ceil((length - overlap) / (tile - overlap))
  return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _ramp(n: int) -> np.ndarray:
  """Raised cosine rising over n pixels; ramp(i) + ramp(n - 1 - i) == 1."""
  x = (np.arange(n, dtype=np.float64) + 0.5) / n
  return 0.5 - 0.5 * np.cos(np.pi * x)


def axis_weights(starts: list[int], tile: int) -> list[np.ndarray]:
  """Per-tile 1-D weights along one axis (see the module docstring)."""
  out = []
  for i, s in enumerate(starts):
    w = np.ones(tile, np.float64)
    if i > 0:  # Rise over the overlap with the previous tile.
      n = starts[i - 1] + tile - s
      w[:n] = np.minimum(w[:n], _ramp(n))
    if i + 1 < len(starts):  # Fall over the overlap with the next tile.
      n = s + tile - starts[i + 1]
      w[tile - n:] = np.minimum(w[tile - n:], _ramp(n)[::-1])
    out.append(w)
  return out


@dataclasses.dataclass(frozen=True)
class TileGrid:
  """Where the tiles of one image lie.

  Attributes:
    height, width: the image size.
    tile: tile side.
    ys, xs: tile start rows / columns; tile k is (ys[k // len(xs)], xs[k %
      len(xs)]) in row-major order.
  """
  height: int
  width: int
  tile: int
  ys: tuple[int, ...]
  xs: tuple[int, ...]

  @property
  def num_tiles(self) -> int:
    return len(self.ys) * len(self.xs)

  @property
  def padded_shape(self) -> tuple[int, int]:
    return max(self.height, self.tile), max(self.width, self.tile)


def make_grid(height: int, width: int, tile: int, overlap: int) -> TileGrid:
  """The tiles covering a ``height`` x ``width`` image."""
  if height < 1 or width < 1:
    raise ValueError(f"empty image ({height}x{width})")
  ph, pw = max(height, tile), max(width, tile)
  return TileGrid(height, width, tile, tuple(tile_starts(ph, tile, overlap)),
                  tuple(tile_starts(pw, tile, overlap)))


def extract_tiles(image: np.ndarray, grid: TileGrid) -> np.ndarray:
  """(num_tiles, tile, tile, C) windows of an (H, W, C) image, row-major."""
  ph, pw = grid.padded_shape
  pad = ((0, ph - grid.height), (0, pw - grid.width), (0, 0))
  if pad[0][1] or pad[1][1]:
    # Mirroring keeps text and texture statistics the model expects; zeros
    # would add an artificial edge.
    image = np.pad(image, pad, mode="symmetric")
  t = grid.tile
  return np.stack([image[y:y + t, x:x + t] for y in grid.ys for x in grid.xs])


def blend_tiles(tiles: np.ndarray, grid: TileGrid) -> np.ndarray:
  """Blends per-tile outputs (num_tiles, tile, tile, C) into (H, W, C) float32."""
  if tiles.shape[0] != grid.num_tiles or tiles.shape[1:3] != (grid.tile,) * 2:
    raise ValueError(f"expected {grid.num_tiles} tiles of {grid.tile}x"
                     f"{grid.tile}, got shape {tiles.shape}")
  ph, pw = grid.padded_shape
  t = grid.tile
  acc = np.zeros((ph, pw, tiles.shape[-1]), np.float64)
  wsum = np.zeros((ph, pw, 1), np.float64)
  wy, wx = axis_weights(list(grid.ys), t), axis_weights(list(grid.xs), t)
  k = 0
  for i, y in enumerate(grid.ys):
    for j, x in enumerate(grid.xs):
      w = np.outer(wy[i], wx[j])[..., None]
      acc[y:y + t, x:x + t] += w * tiles[k]
      wsum[y:y + t, x:x + t] += w
      k += 1
  # Every pixel has a positive weight: border sides are never ramped and a
  # ramp never reaches 0 at a pixel centre.
  out = acc / wsum
  return out[:grid.height, :grid.width].astype(np.float32)
