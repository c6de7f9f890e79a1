"""Regenerate the small builtin text corpus ``sma/data/builtin/python_docs.jsonl.gz``.

The corpus is the documentation strings of the Python standard library (PSF license), one document
per module or public class/function docstring longer than a few lines. It exists so the demo and tiny
configs train on real English prose on a fresh machine with no download; it is not a pretraining
corpus. Output is deterministic for a given Python version (sorted modules, gzip without a timestamp).

    python -m data_prep.builtin_text [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path

# Modules that open windows, print on import or pull in a GUI toolkit.
_SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}
MIN_MODULE_DOC = 200  # characters: skip one-line module docstrings
MIN_OBJECT_DOC = 400  # characters: keep only substantial class/function docs


def stdlib_docstrings() -> list[str]:
    """Docstrings of the importable stdlib modules and their own public members, in sorted order,
    each distinct text once (``inspect.getdoc`` returns a base class's docstring for subclasses)."""
    warnings.filterwarnings("ignore")
    docs: list[str] = []
    for name in sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in _SKIP):
        try:
            mod = importlib.import_module(name)
        except Exception:  # platform-specific modules (winreg, ...) are simply absent
            continue
        doc = inspect.getdoc(mod)
        if doc and len(doc) > MIN_MODULE_DOC:
            docs.append(doc)
        for member, obj in sorted(vars(mod).items()):
            if member.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            doc = inspect.getdoc(obj)
            if doc and len(doc) > MIN_OBJECT_DOC:
                docs.append(doc)
    return list(dict.fromkeys(docs))


def main(argv: list[str] | None = None) -> None:
    default = Path(__file__).resolve().parents[1] / "sma" / "data" / "builtin" / "python_docs.jsonl.gz"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=default, help="output .jsonl.gz (default: %(default)s)")
    args = ap.parse_args(argv)
    docs = stdlib_docstrings()
    lines = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs)
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(lines.encode("utf-8"))
    print(f"wrote {len(docs)} documents ({len(lines) / 1e6:.2f} MB of text) to {args.out}")


if __name__ == "__main__":
    main()
