"""Drawing primitives of the synthetic generator: backgrounds and words.

Everything takes an explicit `np.random.Generator`, so a scene is a pure
function of its seed.
"""

import dataclasses
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from input_pipeline import fonts as fonts_lib

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be "
    "this have from or one had by word but not what all were we when your can "
    "said there use an each which she do how their if will up other about out "
    "many then them these so some her would make like him into time has look "
    "two more write go see number no way could people my than first water "
    "been call who oil its now find long down day did get come made may part "
    "OPEN SALE EXIT STOP Coffee Hotel Bank Street Market Pizza Garden Museum "
    "Station Pharmacy Parking Bakery Books Music Fresh Daily News Welcome "
    "Express Taxi Police Library Cinema Office Centre Hospital Shop Road King "
    "Queen Park Avenue Plaza Tower Bridge City Grand Royal Golden Star Lucky "
    "NEW FREE HOT BEST CAFE BAR BUS ZONE Menu Tea Milk Juice Bread Rice Noodle"
).split()

PALETTE_KINDS = ("gradient", "noise", "shapes", "texture")


def random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
  return tuple(int(c) for c in rng.integers(0, 256, size=3))


def random_text(rng: np.random.Generator) -> str:
  """A word from the list (random case) or a number/code."""
  r = rng.uniform()
  if r < 0.15:
    return str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
  word = WORDS[int(rng.integers(len(WORDS)))]
  if r < 0.35:
    word = word.upper()
  elif r < 0.55:
    word = word.capitalize()
  return word


def background(rng: np.random.Generator, width: int, height: int,
               photos: Sequence[str] = ()) -> np.ndarray:
  """A procedural (or photo) background, uint8 (height, width, 3)."""
  kinds = list(PALETTE_KINDS) + (["photo"] if photos else [])
  kind = kinds[int(rng.integers(len(kinds)))]
  if kind == "photo":
    return _photo(rng, width, height, photos)
  c1 = np.array(random_colour(rng), np.float32)
  c2 = np.array(random_colour(rng), np.float32)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
  if kind == "gradient":
    a = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(a) + yy * np.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
  elif kind == "noise":
    grid = (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3)
    cells = rng.integers(0, 256, size=grid, dtype=np.uint8)
    img = np.asarray(Image.fromarray(cells).resize(
        (width, height), Image.Resampling.BICUBIC), np.float32)
  elif kind == "texture":
    f = rng.uniform(0.02, 0.4, size=2) * rng.choice([-1, 1], size=2)
    t = 0.5 + 0.5 * np.sin(xx * f[0] + yy * f[1] + rng.uniform(0, 6.3))
    if rng.uniform() < 0.5:
      t = t * (0.5 + 0.5 * np.sin(xx * f[1] - yy * f[0]))
    img = c1 * (1 - t[..., None]) + c2 * t[..., None]
  else:  # shapes
    canvas = Image.new("RGB", (width, height), tuple(int(c) for c in c1))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 13))):
      x0, x1 = sorted(rng.integers(-width // 4, width + width // 4, size=2))
      y0, y1 = sorted(rng.integers(-height // 4, height + height // 4, size=2))
      shape = int(rng.integers(3))
      colour = random_colour(rng)
      if shape == 0:
        draw.rectangle((x0, y0, x1, y1), fill=colour)
      elif shape == 1:
        draw.ellipse((x0, y0, x1, y1), fill=colour)
      else:
        draw.line((x0, y0, x1, y1), fill=colour,
                  width=int(rng.integers(1, max(2, min(width, height) // 10))))
    img = np.asarray(canvas, np.float32)
  img = img + rng.normal(0, rng.uniform(0, 8), size=img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def _photo(rng: np.random.Generator, width: int, height: int,
           photos: Sequence[str]) -> np.ndarray:
  path = photos[int(rng.integers(len(photos)))]
  try:
    img = Image.open(path).convert("RGB")
  except OSError as e:
    raise OSError(f"{path}: unreadable background photo ({e})") from e
  w, h = img.size
  scale = max(width / w, height / h) * rng.uniform(1.0, 1.5)
  img = img.resize((max(width, int(w * scale + 0.5)),
                    max(height, int(h * scale + 0.5))), Image.Resampling.BICUBIC)
  x0 = int(rng.integers(0, img.size[0] - width + 1))
  y0 = int(rng.integers(0, img.size[1] - height + 1))
  return np.asarray(img.crop((x0, y0, x0 + width, y0 + height)))


def list_photos(folder: str | None) -> list[str]:
  """Sorted image files of a user folder of background photos."""
  if not folder:
    return []
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: background photo folder not found")
  exts = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
  return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                if n.lower().endswith(exts))


@dataclasses.dataclass
class WordLayers:
  """One rendered word: 'L' layers of the same size, placed at the same spot."""
  fill: Image.Image     # glyph coverage
  effect: Image.Image   # outline + shadow coverage (may be empty)
  region: Image.Image   # the (rotated) word rectangle, for removal masks
  fill_colour: tuple[int, int, int]
  effect_colour: tuple[int, int, int]


def render_word(rng: np.random.Generator, text: str, font_path: str,
                size_px: int, max_angle: float,
                bg_luma: float) -> WordLayers:
  """Renders `text` with random outline / shadow / rotation."""
  font = fonts_lib.load_font(font_path, size_px)
  stroke = int(rng.integers(1, max(2, size_px // 10) + 1)) \
      if rng.uniform() < 0.25 else 0
  shadow = rng.uniform() < 0.2
  off = max(1, size_px // 12) if shadow else 0
  x0, y0, x1, y1 = font.getbbox(text, stroke_width=stroke)
  pad = 2 + off
  size = (x1 - x0 + 2 * pad, y1 - y0 + 2 * pad)
  origin = (pad - x0, pad - y0)
  fill = Image.new("L", size, 0)
  ImageDraw.Draw(fill).text(origin, text, font=font, fill=255)
  effect = Image.new("L", size, 0)
  if stroke:
    ImageDraw.Draw(effect).text(origin, text, font=font, fill=255,
                                stroke_width=stroke, stroke_fill=255)
  if shadow:
    shifted = ImageChops.offset(ImageChops.lighter(fill, effect), off, off)
    effect = ImageChops.lighter(effect, shifted.filter(
        ImageFilter.GaussianBlur(off / 2)))
  effect = ImageChops.subtract(effect, fill)
  region = Image.new("L", size, 255)
  angle = rng.uniform(-max_angle, max_angle)
  if abs(angle) > 0.5:
    fill, effect, region = (
        im.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
        for im in (fill, effect, region))
  colour = random_colour(rng)
  luma = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
  if abs(luma - bg_luma) < 80:  # Keep the text readable.
    colour = (tuple(int(c) // 4 for c in colour) if bg_luma > 127 else
              tuple(255 - (255 - int(c)) // 4 for c in colour))
  effect_colour = tuple(255 - c for c in colour)
  return WordLayers(fill, effect, region, colour, effect_colour)


def composite(image: Image.Image, layers: WordLayers, xy: tuple[int, int]):
  """Pastes the word's effect, then its glyphs, onto `image` in place."""
  image.paste(layers.effect_colour, (*xy, *_corner(layers, xy)), layers.effect)
  image.paste(layers.fill_colour, (*xy, *_corner(layers, xy)), layers.fill)


def _corner(layers: WordLayers, xy: tuple[int, int]) -> tuple[int, int]:
  return xy[0] + layers.fill.size[0], xy[1] + layers.fill.size[1]


def overlaps(box: Sequence[int], boxes: Sequence[Sequence[int]],
             margin: int = 1) -> bool:
  """Whether `box` (x1, y1, x2, y2) touches any of `boxes`."""
  for b in boxes:
    if not (box[2] + margin < b[0] or b[2] + margin < box[0] or
            box[3] + margin < b[1] or b[3] + margin < box[1]):
      return True
  return False
