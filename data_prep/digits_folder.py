"""Write scikit-learn's handwritten digits as an ImageFolder of PNG files, for the tiny image config.

The 1,797 8 x 8 greyscale digits of UCI's "Optical Recognition of Handwritten Digits" set (CC BY 4.0),
as scikit-learn ships them (``sklearn.datasets.load_digits``): real labelled images with no download.
Values 0..16 are scaled to 0..255. Layout: ``<out>/train/<digit>/<index>.png`` and ``<out>/val/...``,
the last 10% of the samples being ``val``. Then ``data_prep.images`` turns the folder into shards:

    python -m data_prep.digits_folder data/digits_png
    python -m data_prep.images --src data/digits_png --dst data/tiny_image --resolution 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

EVAL_FRACTION = 0.1


def write_digits(out: Path) -> dict[str, int]:
    """Write the PNG files; return the number written per split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    cut = len(pixels) - int(len(pixels) * EVAL_FRACTION)
    counts = {"train": 0, "val": 0}
    for i, (img, label) in enumerate(zip(pixels, digits.target)):
        split = "train" if i < cut else "val"
        folder = out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"{i:04d}.png")
        counts[split] += 1
    return counts


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m data_prep.digits_folder", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="folder to write (train/ and val/ with one folder per digit)")
    counts = write_digits(ap.parse_args(argv).out)
    print(f"wrote {counts['train']} train and {counts['val']} val PNG files")


if __name__ == "__main__":
    main()
