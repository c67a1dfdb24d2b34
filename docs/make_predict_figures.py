"""Builds the prediction figures of docs/prediction.md from upocr-predict outputs.

Usage: python docs/make_predict_figures.py --synth_dir=SYNTH --pred_dir=PRED
    [--out_dir=docs/images]

SYNTH: a set written by ``python -m input_pipeline.write_synthetic``; PRED:
``upocr-predict`` outputs per task (text_removal/, text_segmentation/,
tampered_text_detection/, tiled/), see docs/prediction.md for the commands.
"""

import glob
import os
import sys

from absl import flags
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from upocr_jax import cli_flags  # noqa: E402

H = 128  # row height of the figures


def _row(paths):
  ims = [Image.open(p).convert("RGB") for p in paths]
  ims = [im.resize((max(1, im.width * H // im.height), H)) for im in ims]
  row = Image.new("RGB", (sum(i.width for i in ims) + 4 * len(ims), H), "white")
  x = 0
  for im in ims:
    row.paste(im, (x, 0))
    x += im.width + 4
  return row


def _stack(rows):
  out = Image.new("RGB", (max(r.width for r in rows), len(rows) * (H + 4)),
                  "white")
  for i, r in enumerate(rows):
    out.paste(r, (0, i * (H + 4)))
  return out


def main(synth, pred, out):
  os.makedirs(out, exist_ok=True)
  tr = sorted(glob.glob(f"{synth}/SCUT-EnsText/test/image/*"))
  _stack([_row([p, f"{pred}/text_removal/{os.path.splitext(os.path.basename(p))[0]}.png"])
          for p in tr]).save(f"{out}/predict_removal.png")
  seg = sorted(glob.glob(f"{synth}/TextSeg/image/syn_test_*"))
  _stack([_row([p] + [f"{pred}/text_segmentation/{os.path.splitext(os.path.basename(p))[0]}_{s}.png"
                      for s in ("mask", "overlay")]) for p in seg]
         ).save(f"{out}/predict_segmentation.png")
  ttd = sorted(glob.glob(f"{synth}/Tampered-IC13/test_img/*"))
  _stack([_row([p] + [f"{pred}/tampered_text_detection/{os.path.splitext(os.path.basename(p))[0]}_{s}.png"
                      for s in ("tamper", "overlay")]) for p in ttd]
         ).save(f"{out}/predict_tampered.png")
  _stack([_row([p, f"{pred}/text_removal/{os.path.splitext(os.path.basename(p))[0]}.png",
                f"{pred}/tiled/{os.path.splitext(os.path.basename(p))[0]}.png"]) for p in tr]
         ).save(f"{out}/predict_tiled.png")


def _define_flags(fv: flags.FlagValues, argv=None) -> None:
  del argv  # no --config here
  flags.DEFINE_string("synth_dir", None, "Synthetic set (write_synthetic).",
                      flag_values=fv)
  flags.DEFINE_string("pred_dir", None, "upocr-predict outputs per task.",
                      flag_values=fv)
  flags.DEFINE_string("out_dir", "docs/images", "Where the PNGs go.",
                      flag_values=fv)


def _main(argv, fv: flags.FlagValues) -> None:
  if len(argv) > 1:
    raise cli_flags.UsageError(f"unexpected arguments: {argv[1:]}")
  cli_flags.require(fv, "synth_dir", "pred_dir")
  main(fv.synth_dir, fv.pred_dir, fv.out_dir)


if __name__ == "__main__":
  cli_flags.run("make_predict_figures", __doc__, _define_flags, _main)
