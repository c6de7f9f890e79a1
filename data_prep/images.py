"""Images -> one token per pixel: uint8 ``(H*W, 3)`` arrays (and class labels) in MDS or tar shards.

Inputs (--src, any number of local paths, fsspec URLs or globs):
  DIR with train/ val/ (valid/, test/)  each of those subfolders is a split, read as one of the two below
  DIR of class folders (ImageFolder)     label = index of the class folder's name in the sorted class list
  DIR of images (flat), image files      no labels
  *.tar, *.tar.gz, *.tgz                 members are images; a member's parent folder is its class (members
                                         at the top level: no labels)
Image files are those with torchvision's ImageFolder suffixes (.jpg .jpeg .png .ppm .bmp .pgm .tif .tiff
.webp, any case); other files are ignored. The class list is the sorted union of the class names of every
input, written to the manifest (``classes``). Labelled and unlabelled inputs cannot be mixed.

Splits: the subfolders of a DIR with split folders; otherwise the split named in the input's name
(train / val / valid / test), else --split. --eval-fraction F moves a share F of the images of every
train input to the split ``val``, chosen by a hash of the image's path within its input (the same images
on every run, machine and --workers).

Each image is decoded with Pillow and converted to RGB as torchvision's loader does (greyscale expanded,
alpha dropped, 16-bit values scaled to 8 bits; no EXIF rotation), resized so its short side is
--resolution (bicubic, antialiased; the long side int(resolution * long / short), as torchvision's
Resize), centre-cropped to --resolution x --resolution (torchvision's CenterCrop), and stored as uint8
``(H*W, 3)`` in row-major order: 110,592 bytes at 192 x 192. The manifest records each split's grid
``[H, W, 3]``; the train split's per-channel mean and std over all pixels go to ``<split>/stats.json``,
with which readers standardize pixels on the fly. A file that does not decode (corrupt, truncated) is a
malformed record named by its path (--on-error stop | skip).

    python -m data_prep.images --src imagenet100 --dst s3://bucket/imagenet100_192 --resolution 192 --workers 8
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import tarfile
from collections.abc import Iterator
from typing import Any

import numpy as np

from data_prep.cli import execute, parser, sources, split_from_name
from data_prep.writer import Corpus, Part
from sma.data.samples import Sample
from sma.data.storage import filesystem, join, open_url

PROG = "data_prep.images"
SPLITS = ("train", "val", "valid", "test")
EVAL_SPLIT = "val"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
CHANNELS = 3

log = logging.getLogger("data_prep")

# One input's images: (path within the input, class name or None), sorted by path.
Listing = list[tuple[str, str | None]]


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def is_tar(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


# ---- decoding ---------------------------------------------------------------------------------------

def to_rgb(img):
    """An RGB Pillow image, as torchvision's loader makes it (``convert("RGB")``), with 16-bit and 32-bit
    integer greyscale scaled to 8 bits first (``convert`` would clip them)."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        a = np.asarray(img).astype(np.int64)
        img = Image.fromarray(np.clip(a >> 8, 0, 255).astype(np.uint8), "L")
    return img if img.mode == "RGB" else img.convert("RGB")


def resize_crop(img, resolution: int):
    """Short side to ``resolution`` (bicubic), then the centre ``resolution x resolution`` crop; the
    sizes and offsets follow torchvision's ``Resize(resolution)`` and ``CenterCrop(resolution)``."""
    from PIL import Image

    w, h = img.size
    if w <= h:
        size = (resolution, int(resolution * h / w))
    else:
        size = (int(resolution * w / h), resolution)
    if size != (w, h):
        img = img.resize(size, Image.BICUBIC)
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    return img.crop((left, top, left + resolution, top + resolution))


def decode_image(data: bytes, resolution: int) -> np.ndarray:
    """Encoded image bytes -> uint8 ``(resolution * resolution, 3)`` pixels, row by row. Anything Pillow
    cannot decode (not an image, truncated, a decompression bomb) raises ``ValueError``."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode fully here: a truncated file fails now, not half-way through resizing
            rgb = resize_crop(to_rgb(img), resolution)
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a decodable image: {e}") from None
    return np.asarray(rgb, dtype=np.uint8).reshape(-1, CHANNELS)


def read_bytes(url: str, endpoint_url: str = "") -> bytes:
    with open_url(url, "rb", endpoint_url) as f:
        return f.read()


# ---- listing inputs ---------------------------------------------------------------------------------

def list_folder(url: str, endpoint_url: str = "") -> Listing:
    """The images under a folder. ImageFolder (images in subfolders): the first path component is the
    class, and images at the top level are ignored (as torchvision does); flat: no classes."""
    fs, root = filesystem(url, endpoint_url)
    root = root.rstrip("/")
    rel = sorted(p[len(root) + 1:] for p in fs.find(root) if is_image(p))
    nested = [r for r in rel if "/" in r]
    if not nested:
        return [(r, None) for r in rel]
    if len(nested) < len(rel):
        log.warning("%s: %d image(s) at the top of a class-folder layout are ignored", url, len(rel) - len(nested))
    return [(r, r.split("/", 1)[0]) for r in nested]


def _open_tar(url: str, endpoint_url: str, stream: bool):
    f = open_url(url, "rb", endpoint_url)
    return f, tarfile.open(fileobj=f, mode="r|*" if stream else "r:*")


def list_tar(url: str, endpoint_url: str = "") -> Listing:
    """The image members of a tar archive (in archive order); a member's parent folder is its class."""
    f, tar = _open_tar(url, endpoint_url, stream=False)
    with f, tar:
        names = [m.name for m in tar.getmembers() if m.isfile() and is_image(m.name)]
    nested = [n for n in names if "/" in n]
    if nested and len(nested) < len(names):
        raise ValueError(f"{url}: some images sit in class folders and some do not; labels would be partial")
    return [(n, n.rsplit("/", 2)[-2] if "/" in n else None) for n in names]


def in_eval(path: str, fraction: float) -> bool:
    """Whether the image at ``path`` (within its input) belongs to the carved evaluation share."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "big")
    return h / 2**64 < fraction


# ---- the corpus -------------------------------------------------------------------------------------

class ImageCorpus(Corpus):
    """Parts are chunks of one input's sorted listing (``Part.rows``) or whole tar archives. The listings
    are made once, before any part runs (workers inherit them); their digest is part of the settings, so
    a changed input rewrites its parts."""

    name = "images"

    def __init__(self, resolution: int, eval_fraction: float, classes: list[str], listings: dict[str, Listing]):
        self.resolution, self.eval_fraction, self.classes = resolution, eval_fraction, classes
        self.listing_sha256 = hashlib.sha256(repr(sorted(listings.items())).encode()).hexdigest()[:16]
        self._listings = listings
        self._label = {c: i for i, c in enumerate(classes)}

    def split_info(self, split: str) -> dict[str, Any]:
        return {"grid": [self.resolution, self.resolution, CHANNELS]}

    def _wanted(self, part: Part, path: str) -> bool:
        """With --eval-fraction, a train input's images go either to its train part or to its val part."""
        if self.eval_fraction <= 0 or part.split not in ("train", EVAL_SPLIT):
            return True
        return in_eval(path, self.eval_fraction) == (part.split == EVAL_SPLIT)

    def records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        if is_tar(part.source):
            return self._tar_records(part, endpoint_url)
        start, stop = part.rows or (0, None)
        return ((path, (functools.partial(read_bytes, join(part.source, path), endpoint_url), cls))
                for path, cls in self._listings[part.source][start:stop] if self._wanted(part, path))

    def _tar_records(self, part: Part, endpoint_url: str) -> Iterator[tuple[str, Any]]:
        labelled = any(cls is not None for _, cls in self._listings[part.source])
        f, tar = _open_tar(part.source, endpoint_url, stream=True)
        with f, tar:
            try:
                for member in tar:
                    if not (member.isfile() and is_image(member.name)) or not self._wanted(part, member.name):
                        continue
                    data = tar.extractfile(member).read()
                    cls = member.name.rsplit("/", 2)[-2] if labelled else None
                    yield member.name, (lambda data=data: data, cls)
            except (tarfile.TarError, EOFError, OSError) as e:
                yield "archive", (e, None)  # a damaged archive: reported with --on-error's rule

    def parse(self, raw: tuple[Any, str | None]) -> Sample:
        read, cls = raw
        if isinstance(read, Exception):
            raise ValueError(f"damaged archive: {read}")
        try:
            data = read()
        except OSError as e:
            raise ValueError(f"unreadable: {e}") from None
        sample: Sample = {"px": decode_image(data, self.resolution)}
        if cls is not None:
            sample["y"] = self._label[cls]
        return sample

    def samples(self, items: Iterator[Sample]) -> Iterator[Sample]:
        return items


def plan(srcs: list[str], split: str, eval_fraction: float, images_per_part: int, resolution: int,
         endpoint_url: str = "") -> tuple[ImageCorpus, list[Part], dict[str, Any]]:
    """The corpus (with every input listed), its parts in --src order, and what the manifest records."""
    inputs: list[tuple[str, str]] = []  # (source key, split)
    listings: dict[str, Listing] = {}
    loose: dict[str, list[str]] = {}  # image files given one by one, by folder
    for url in srcs:
        fs, path = filesystem(url, endpoint_url)
        name = url.rstrip("/").rsplit("/", 1)[-1]
        if fs.isdir(path):
            subdirs = {e["name"].rstrip("/").rsplit("/", 1)[-1] for e in fs.ls(path, detail=True)
                       if e["type"] == "directory"}
            split_dirs = [s for s in SPLITS if s in subdirs]
            for s, folder in ([(s, join(url, s)) for s in split_dirs] or [(split_from_name(url, SPLITS, split), url)]):
                listings[folder] = list_folder(folder, endpoint_url)
                inputs.append((folder, s))
        elif is_tar(name):
            listings[url] = list_tar(url, endpoint_url)
            inputs.append((url, split_from_name(url, SPLITS, split)))
        elif is_image(name):
            folder = url.rsplit("/", 1)[0] if "/" in url else "."
            if folder not in loose:
                loose[folder] = []
                inputs.append((folder, split_from_name(folder, SPLITS, split)))
            loose[folder].append(name)
        else:
            raise ValueError(f"{url}: not a folder, a tar archive or an image file ({', '.join(IMAGE_SUFFIXES)})")
    for folder, names in loose.items():
        if folder in listings:
            raise ValueError(f"{folder}: given both as a folder and through its files")
        listings[folder] = [(n, None) for n in sorted(set(names))]
    seen = [key for key, _ in inputs]
    if len(set(seen)) != len(seen):
        raise ValueError("an input is given twice in --src")
    if eval_fraction > 0 and any(s == EVAL_SPLIT for _, s in inputs):
        raise ValueError(f"--eval-fraction carves the split {EVAL_SPLIT!r}, but the inputs already have one")
    labelled = {key: any(c is not None for _, c in listings[key]) for key, _ in inputs if listings[key]}
    if len(set(labelled.values())) > 1:
        raise ValueError("some inputs have class folders and some do not: "
                         f"labelled {[k for k, v in labelled.items() if v]}, unlabelled "
                         f"{[k for k, v in labelled.items() if not v]}")
    classes = sorted({c for listing in listings.values() for _, c in listing if c is not None})
    corpus = ImageCorpus(resolution, eval_fraction, classes, listings)
    pieces: list[tuple[str, str, tuple[int, int] | None]] = []
    for key, s in inputs:
        chunks = [None] if is_tar(key) else [(a, min(a + images_per_part, len(listings[key])))
                                             for a in range(0, max(1, len(listings[key])), images_per_part)]
        for rows in chunks:
            pieces.append((key, s, rows))
            if eval_fraction > 0 and s == "train":
                pieces.append((key, EVAL_SPLIT, rows))
    parts = [Part(i, s, key, rows) for i, (key, s, rows) in enumerate(pieces)]
    rule = "split folders, else the input's name, else --split"
    if eval_fraction > 0:
        rule += f"; a share {eval_fraction} of each train input's images (by path hash) is {EVAL_SPLIT}"
    return corpus, parts, {"classes": classes, "split_rule": rule}


def main(argv: list[str] | None = None) -> dict:
    ap = parser(PROG, __doc__)
    ap.add_argument("--resolution", type=int, default=192, help="side of the square crop (default 192)")
    ap.add_argument("--split", default="train", help="split for inputs whose name names none (default train)")
    ap.add_argument("--eval-fraction", type=float, default=0.0,
                    help=f"share of each train input's images moved to split {EVAL_SPLIT!r} (default 0)")
    ap.add_argument("--images-per-part", type=int, default=1000,
                    help="images per part of a folder (the unit of parallel work and of re-runs; default 1000)")
    args = ap.parse_args(argv)
    if args.resolution < 1 or args.images_per_part < 1 or not 0 <= args.eval_fraction < 1:
        ap.error("--resolution and --images-per-part must be >= 1, --eval-fraction in [0, 1)")
    try:
        corpus, parts, extra = plan(sources(args), args.split, args.eval_fraction, args.images_per_part,
                                    args.resolution, args.endpoint_url)
    except (ValueError, tarfile.TarError) as e:
        ap.error(str(e))
    return execute(corpus, parts, args, argv, PROG, extra)


if __name__ == "__main__":
    main()
