"""Pictures of the masks a pretrained model chooses (README, "What the masks learn").

    python -m sma.visualize CHECKPOINT INPUTS --out DIR [--draws 8] [--seed 0] [--image-shape H,W,C]

CHECKPOINT is a run's checkpoints folder, one ``stepNNNNNNNN`` folder or an exported ``.pt``. What is
drawn depends on the model's inputs:

- bytes (text, proteins): INPUTS is a text file (one input per line) or FASTA. ``masks.html`` (and
  ``masks.png``) show each input with its masked bytes highlighted: two learned draws (generator seeds
  ``seed`` and ``seed + 1``) beside a random mask of the same size (the paper's table 7).
- continuous: INPUTS is a CSV of numeric columns or a ``.npy`` of shape (N, n) or (N, n, d_raw).
  ``comask.png`` is the heat map of how often each pair of tokens is masked together (``--draws``
  learned masks per input), ordered by a hierarchical clustering so that groups the model masks
  together show as blocks, beside the same for random masks; ``comask.npy`` (learned), ``comask_random.npy``
  and ``comask_order.npy`` hold the matrices and the order.
- with ``--image-shape H,W,C`` (display only; n = H * W, d_raw = C): ``images.png``, a grid of input,
  random mask and two learned masks per input (the paper's figure 2).
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sma.inputs import NUM_SPECIAL, SEP, Batch, InputError, encode, pad_continuous, pad_ids
from sma.masking import num_to_mask, random_mask

log = logging.getLogger("sma.visualize")

FASTA_SUFFIXES = (".fa", ".fasta", ".faa", ".fas")
CHUNK = 32  # inputs per forward pass
PNG_INPUTS = 6  # inputs drawn in the PNG pictures (the HTML holds all)


class VisualizeError(ValueError):
    """Inputs that cannot be shown; the message names the file (and line)."""


@dataclass
class Inputs:
    """What was read: a padded batch, one label per input ("line 3") and notes on what was changed."""

    batch: Batch
    labels: list[str]
    notes: list[str] = field(default_factory=list)
    columns: list[str] | None = None  # CSV header, when there is one


# -- reading --------------------------------------------------------------------------------------
def _is_fasta(path: Path, first: bytes) -> bool:
    return path.suffix.lower() in FASTA_SUFFIXES or first.lstrip().startswith(b">")


def read_byte_inputs(path: Path, max_len: int) -> Inputs:
    """One input per line of a text file, or per FASTA entry. Lines longer than the model takes are cut
    (with a note), blank lines and FASTA entries holding no residue letters are skipped (with a note)."""
    raw = path.read_bytes()
    if not raw.strip():
        raise VisualizeError(f"{path}: empty file, no input to show")
    records: list[tuple[str, bytes]] = []
    notes: list[str] = []
    if _is_fasta(path, raw):
        from data_prep.pfam import fasta_records, protein  # read as the Pfam prep reads them

        for where, (_, item) in fasta_records(str(path), ""):
            if isinstance(item, Exception):
                notes.append(f"{path}: {where}: skipped ({item})")
            else:
                header, seq = item
                records.append((f"{where} (>{header.decode('utf-8', errors='replace')})", protein(seq).encode()))
    else:
        for i, line in enumerate(raw.split(b"\n"), start=1):
            line = line.rstrip(b"\r")
            if line.strip():
                records.append((f"line {i}", line))
            elif i < raw.count(b"\n") + 1:
                notes.append(f"{path}: line {i}: blank, skipped")
    if not records:
        raise VisualizeError(f"{path}: no input to show ({'; '.join(notes) or 'nothing but blank lines'})")
    room = max_len - 1  # [SEP] ends every input
    seqs = []
    for where, data in records:
        if len(data) > room:
            notes.append(f"{path}: {where}: {len(data)} bytes, cut to the model's {room} (max_len {max_len} "
                         "with [SEP])")
        seqs.append(encode(data, max_len=max_len, truncate=True))
    return Inputs(pad_ids(seqs), [w for w, _ in records], notes)


def _read_csv(path: Path) -> tuple[np.ndarray, list[str] | None, list[int]]:
    """Rows of numbers (N, columns), the header if the first line is not numeric, and each row's line."""
    lines = [(i, line) for i, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
             if line.strip()]
    if not lines:
        raise VisualizeError(f"{path}: empty file, no input to show")
    header = [c.strip() for c in lines[0][1].split(",")]
    if all(_number(c) is not None for c in header):
        header = None
    else:
        lines = lines[1:]
    want = len(header) if header else len(lines[0][1].split(","))
    rows = []
    for i, line in lines:
        cells = line.split(",")
        if len(cells) != want:
            raise VisualizeError(f"{path}: line {i}: {len(cells)} columns, expected {want}"
                                 f"{' (as the header)' if header else ' (as the first row)'}")
        values = [_number(c) for c in cells]
        bad = next((c.strip() for c, v in zip(cells, values) if v is None or not np.isfinite(v)), None)
        if bad is not None:
            raise VisualizeError(f"{path}: line {i}: {bad!r} is not a finite number")
        rows.append(values)
    if not rows:
        raise VisualizeError(f"{path}: a header and no rows, no input to show")
    return np.asarray(rows, dtype=np.float32), header, [i for i, _ in lines]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_continuous_inputs(path: Path, max_len: int, d_raw: int) -> Inputs:
    """(N, n, d_raw) values from a CSV (n * d_raw numeric columns per row, optional header) or a .npy of
    shape (N, n), (N, n, d_raw) or (N, H, W, d_raw)."""
    header, lines = None, None
    if path.suffix.lower() == ".npy":
        try:
            x = np.load(path, allow_pickle=False).astype(np.float32)
        except (OSError, ValueError) as e:
            raise VisualizeError(f"{path}: cannot read the array ({e})") from None
        if x.ndim == 4:
            x = x.reshape(x.shape[0], -1, x.shape[-1])
        if x.ndim == 2 and d_raw > 1:
            raise VisualizeError(f"{path}: shape {x.shape} has no channel axis; the model takes d_raw={d_raw}")
    else:
        x, header, lines = _read_csv(path)
    if x.ndim == 2:
        if x.shape[1] % d_raw:
            raise VisualizeError(f"{path}: {x.shape[1]} columns do not split into tokens of d_raw={d_raw}")
        x = x.reshape(x.shape[0], -1, d_raw)
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[-1] != d_raw:
        raise VisualizeError(f"{path}: shape {x.shape}, expected (N, n) or (N, n, d_raw={d_raw}) with N >= 1")
    if x.shape[1] > max_len:
        raise VisualizeError(f"{path}: {x.shape[1]} tokens per input, the model's max_len is {max_len}")
    try:
        batch = pad_continuous(list(x))
    except InputError as e:  # names the sample: its line for a CSV
        raise VisualizeError(f"{path}: {e}") from None
    labels = [f"line {i}" for i in lines] if lines else [f"row {i}" for i in range(len(x))]
    return Inputs(batch, labels, columns=header if header and d_raw == 1 else None)


# -- masks ----------------------------------------------------------------------------------------
@torch.no_grad()
def learned_masks(model: torch.nn.Module, batch: Batch, seed: int) -> torch.Tensor:
    """The model's own masks (its configured mode, fully guided) for every input, (N, n) bool; one
    fixed-seed generator, so the same seed gives the same masks."""
    gen = torch.Generator().manual_seed(seed)
    parts = [model(Batch(batch.inputs[s:s + CHUNK], batch.valid[s:s + CHUNK]), progress=1.0, generator=gen).mask
             for s in range(0, batch.valid.shape[0], CHUNK)]
    return torch.cat(parts)


def random_masks(batch: Batch, ratio: float, seed: int) -> torch.Tensor:
    """Uniform masks of the same size per input as the learned ones. (N, n) bool."""
    gen = torch.Generator().manual_seed(seed)
    return random_mask(batch.valid, num_to_mask(batch.valid.sum(1), ratio), generator=gen)


def comasking(masks: torch.Tensor) -> np.ndarray:
    """How often each pair of tokens is masked together: masks (D, N, n) bool of D draws of N inputs ->
    (n, n) float64, symmetric, ``C[i, j]`` = share of the D * N masks holding both i and j; the diagonal
    is each token's mask frequency."""
    m = masks.reshape(-1, masks.shape[-1]).double()
    return (m.T @ m / m.shape[0]).numpy()


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """Order of the rows of a co-masking matrix by average-linkage hierarchical clustering, so groups
    masked together sit next to each other. (n, n) -> (n,) int."""
    from scipy.cluster.hierarchy import leaves_list, linkage

    if matrix.shape[0] < 3:
        return np.arange(matrix.shape[0])
    return leaves_list(linkage(matrix, method="average", metric="euclidean"))


# -- bytes: HTML and PNG --------------------------------------------------------------------------
def _utf8_length(lead: int) -> int:
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def render_bytes(ids: list[int], masked: list[bool]) -> str:
    """HTML of one input's valid ids with masked tokens in ``<mark data-bytes="k">`` (k bytes each: a
    character whose bytes are all masked is one mark; one whose bytes differ is shown byte by byte as
    ``\\xNN``). [SEP] shows as a middle dot."""
    out, i = [], 0
    while i < len(ids):
        if ids[i] < NUM_SPECIAL:
            pieces = [("\u00b7" if ids[i] == SEP else "\u2400", 1, masked[i], "special")]
        else:
            width = min(_utf8_length(ids[i] - NUM_SPECIAL), len(ids) - i)
            chunk = bytes(t - NUM_SPECIAL for t in ids[i:i + width] if t >= NUM_SPECIAL)
            try:
                text = chunk.decode("utf-8") if len(chunk) == width and len(set(masked[i:i + width])) == 1 else None
            except UnicodeDecodeError:
                text = None
            if text is None:
                width = 1
                b = ids[i] - NUM_SPECIAL
                pieces = [(chr(b) if 32 <= b < 127 else f"\\x{b:02x}", 1, masked[i], "byte" if b >= 127 else "")]
            else:
                pieces = [(text.replace("\t", "\u21e5"), width, masked[i], "")]
        for text, width, is_masked, cls in pieces:
            attr = f' class="{cls}"' if cls else ""
            body = html.escape(text)
            out.append(f'<mark data-bytes="{width}"{attr}>{body}</mark>' if is_masked
                       else (f"<span{attr}>{body}</span>" if cls else body))
        i += width
    return "".join(out)


_STYLE = """body{font-family:sans-serif;margin:2em;max-width:80em}
.seq{font-family:monospace;white-space:pre-wrap;word-break:break-all}
mark{background:#f4a261;color:#000}.special,.byte{color:#888}
table{border-collapse:collapse}td{padding:.15em .6em;vertical-align:top}td.what{color:#555;white-space:nowrap}
section{margin-bottom:1.2em}h2{font-size:1em;margin:.3em 0}.notes{color:#a00}"""


def _page(title: str, intro: str, notes: list[str], sections: list[str]) -> str:
    note_list = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n<p>{intro}</p>\n"
            + (f'<ul class="notes">{note_list}</ul>\n' if notes else "") + "\n".join(sections) + "\n</body></html>\n")


def write_text_masks(model, cfg, inputs: Inputs, out: Path, seed: int, source: str) -> list[Path]:
    batch = inputs.batch
    rows = {f"learned, seed {seed}": learned_masks(model, batch, seed),
            f"learned, seed {seed + 1}": learned_masks(model, batch, seed + 1),
            "random, same size": random_masks(batch, cfg.masking.ratio, seed)}
    sections = []
    for b, label in enumerate(inputs.labels):
        n = int(batch.valid[b].sum())
        ids = batch.inputs[b, :n].tolist()
        cells = "".join(f'<tr><td class="what">{html.escape(what)}</td><td class="seq" data-masked="{int(m[b].sum())}">'
                        f"{render_bytes(ids, m[b, :n].tolist())}</td></tr>" for what, m in rows.items())
        sections.append(f'<section><h2>{html.escape(label)} ({n} tokens)</h2><table>{cells}</table></section>')
    intro = (f"Masked tokens are highlighted: two masks drawn by the model from the same weights (generator "
             f"seeds {seed} and {seed + 1}) and a random mask of the same size. Masking: "
             f"{html.escape(cfg.masking.mode)}, ratio {cfg.masking.ratio}, selection keys "
             f"{html.escape(cfg.masking.selection_keys)}. [SEP] shows as \u00b7.")
    page = out / "masks.html"
    page.write_text(_page(f"SMA masks: {source}", intro, inputs.notes, sections), encoding="utf-8")
    written = [page]
    png = _with_pyplot(lambda plt: _text_png(plt, inputs, rows, out / "masks.png"))
    return written + ([png] if png else [])


def _text_png(plt, inputs: Inputs, rows: dict[str, torch.Tensor], path: Path) -> Path:
    """Each input's masks as strips of cells (wrapped at 64), masked cells dark, with the characters."""
    width = 64
    shown = range(min(PNG_INPUTS, len(inputs.labels)))
    lengths = [int(inputs.batch.valid[b].sum()) for b in shown]
    strips = [-(-n // width) for n in lengths]
    height = sum(len(rows) * s + 1.5 for s in strips)
    fig, ax = plt.subplots(figsize=(12, max(1.5, 0.2 * height)))
    ax.set_xlim(-12, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    y = 0.0
    for b, n, s in zip(shown, lengths, strips):
        ax.text(-12, y + 0.8, inputs.labels[b], fontsize=8, weight="bold")
        y += 1.2
        ids = inputs.batch.inputs[b, :n].tolist()
        for what, m in rows.items():
            ax.text(-12, y + 0.7, what, fontsize=7, color="#555")
            for j in range(n):
                x0, y0 = j % width, y + j // width
                masked = bool(m[b, j])
                ax.add_patch(plt.Rectangle((x0, y0), 1, 1, color="#f4a261" if masked else "#eeeeee", lw=0))
                b_ = ids[j] - NUM_SPECIAL
                if 32 < b_ < 127:
                    ax.text(x0 + 0.5, y0 + 0.78, chr(b_), fontsize=8, ha="center", family="monospace")
            y += s
        y += 0.3
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# -- continuous: co-masking heat map and image grid -----------------------------------------------
def write_comasking(model, cfg, inputs: Inputs, out: Path, seed: int, draws: int, source: str) -> list[Path]:
    batch = inputs.batch
    learned = torch.stack([learned_masks(model, batch, seed + d) for d in range(draws)])
    rand = torch.stack([random_masks(batch, cfg.masking.ratio, seed + d) for d in range(draws)])
    matrix, matrix_random = comasking(learned), comasking(rand)
    order = cluster_order(matrix)
    written = [out / "comask.npy", out / "comask_random.npy", out / "comask_order.npy"]
    for path, array in zip(written, (matrix, matrix_random, order)):
        np.save(path, array)
    names = inputs.columns or [str(i) for i in range(matrix.shape[0])]

    def heat_map(plt) -> Path:
        fig, axes = plt.subplots(1, 2, figsize=(13, 6))
        top = max(float(matrix.max()), float(matrix_random.max()))
        for ax, m, title in ((axes[0], matrix, f"learned masks ({draws} draws per input)"),
                             (axes[1], matrix_random, "random masks, same size")):
            im = ax.imshow(m[np.ix_(order, order)], cmap="magma", vmin=0, vmax=top)
            ax.set_title(title, fontsize=10)
            if len(names) <= 64:
                ax.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=6)
                ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=6)
        fig.colorbar(im, ax=axes, shrink=0.8, label="share of masks holding both tokens")
        fig.suptitle(f"How often two tokens are masked together, {len(inputs.labels)} inputs, ordered by a "
                     f"hierarchical clustering of the learned matrix\n{source}", fontsize=10)
        fig.savefig(out / "comask.png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        return out / "comask.png"

    png = _with_pyplot(heat_map)
    return written + ([png] if png else [])


def write_images(model, cfg, inputs: Inputs, out: Path, seed: int, shape: tuple[int, int, int]) -> list[Path]:
    h, w, c = shape
    batch = inputs.batch
    n = batch.valid.shape[1]
    if h * w != n or c != batch.inputs.shape[-1]:
        raise VisualizeError(f"--image-shape {h},{w},{c} does not match inputs of {n} tokens x d_raw "
                             f"{batch.inputs.shape[-1]} (needs H * W = n and C = d_raw)")
    columns = {"input": None, "random mask": random_masks(batch, cfg.masking.ratio, seed),
               f"learned, seed {seed}": learned_masks(model, batch, seed),
               f"learned, seed {seed + 1}": learned_masks(model, batch, seed + 1)}

    def grid(plt) -> Path:
        shown = min(PNG_INPUTS, len(inputs.labels))
        fig, axes = plt.subplots(shown, len(columns), figsize=(2.2 * len(columns), 2.2 * shown), squeeze=False)
        for r in range(shown):
            x = batch.inputs[r].numpy().reshape(h, w, c)
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
            image = x[..., 0] if c == 1 else x if c == 3 else x.mean(-1)
            for k, (title, mask) in enumerate(columns.items()):
                shown_image = np.repeat(image[..., None], 3, -1) if image.ndim == 2 else image.copy()
                if mask is not None:
                    shown_image[mask[r].numpy().reshape(h, w)] = 0.5  # masked pixels grey
                ax = axes[r, k]
                ax.imshow(shown_image, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=9)
                if k == 0:
                    ax.set_ylabel(inputs.labels[r], fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "images.png", dpi=100)
        plt.close(fig)
        return out / "images.png"

    png = _with_pyplot(grid)
    if png is None:
        raise VisualizeError("--image-shape draws with matplotlib, which is not importable here "
                             "(pip install matplotlib)")
    return [png]


def _with_pyplot(draw: Callable) -> Path | None:
    """Run ``draw(pyplot)`` with a file-only backend; None (and a warning) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not importable: no PNG written (pip install matplotlib)")
        return None
    return draw(plt)


# -- command --------------------------------------------------------------------------------------
def _image_shape(text: str) -> tuple[int, int, int]:
    try:
        h, w, c = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected H,W,C (three integers), got {text!r}") from None
    return h, w, c


def visualize(checkpoint: str | Path, inputs_path: str | Path, out: str | Path, *, seed: int = 0, draws: int = 8,
              image_shape: tuple[int, int, int] | None = None) -> list[Path]:
    """Write the pictures for ``checkpoint`` on ``inputs_path`` into ``out``; returns the files written."""
    from sma.checkpoint import load_pretrained

    model, cfg = load_pretrained(checkpoint)
    path, out = Path(inputs_path), Path(out)
    if not path.is_file():
        raise VisualizeError(f"{path}: no such file")
    out.mkdir(parents=True, exist_ok=True)
    source = str(checkpoint)
    if cfg.masking.mode != "guided":
        log.warning("the model was trained with masking.mode=%s: its masks are not chosen by attention",
                    cfg.masking.mode)
    if cfg.model.modality == "bytes":
        if image_shape is not None:
            raise VisualizeError("--image-shape is for continuous inputs; this model takes bytes")
        inputs = read_byte_inputs(path, cfg.model.max_len)
    else:
        inputs = read_continuous_inputs(path, cfg.model.max_len, cfg.model.d_raw)
    for note in inputs.notes:
        log.warning("%s", note)
    if cfg.model.modality == "bytes":
        return write_text_masks(model, cfg, inputs, out, seed, source)
    if image_shape is not None:
        return write_images(model, cfg, inputs, out, seed, image_shape)
    return write_comasking(model, cfg, inputs, out, seed, draws, source)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a run's checkpoints folder, one stepNNNNNNNN folder, or an exported .pt")
    p.add_argument("inputs", help="text (one input per line) or FASTA for byte models; CSV or .npy for continuous")
    p.add_argument("--out", required=True, help="folder for the pictures")
    p.add_argument("--seed", type=int, default=0, help="generator seed of the first mask draw")
    p.add_argument("--draws", type=int, default=8, help="mask draws per input for the co-masking matrix")
    p.add_argument("--image-shape", type=_image_shape, help="H,W,C: show continuous inputs as images")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from sma.checkpoint import CheckpointFormatError
    from sma.config import ConfigError

    try:
        files = visualize(args.checkpoint, args.inputs, args.out, seed=args.seed, draws=args.draws,
                          image_shape=args.image_shape)
    except (VisualizeError, CheckpointFormatError, ConfigError, InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
