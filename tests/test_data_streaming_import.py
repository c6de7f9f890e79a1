"""``import_streaming`` in a fresh interpreter: with torchvision as installed here, without it, and
without mosaicml-streaming at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# Run first in the child: hide the named packages, as if they were not installed.
HIDE = "import sys\nfor name in {hidden!r}:\n    sys.modules[name] = None  # import raises ModuleNotFoundError\n"

USE = """
from sma.data.streaming_import import import_streaming
streaming = import_streaming()
from streaming.base.shared.prefix import _unpack_locals  # what sma.data.shm reads
import streaming as again
assert again is streaming
names = [streaming.StreamingDataset, streaming.StreamingDataLoader, streaming.MDSWriter]
print(streaming.__version__, *(n.__module__ for n in names))
"""

ROUND_TRIP = """
import tempfile
from pathlib import Path
with tempfile.TemporaryDirectory() as tmp:
    with streaming.MDSWriter(out=str(Path(tmp) / "mds"), columns={"x": "int"}) as writer:
        for i in range(3):
            writer.write({"x": i})
    data = streaming.StreamingDataset(local=str(Path(tmp) / "mds"), batch_size=1)
    print("samples", sorted(data[i]["x"] for i in range(data.num_samples)))
"""


def run_child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("hidden", [(), ("torchvision",)], ids=["as-installed", "no-torchvision"])
def test_streaming_imports_with_or_without_torchvision(hidden: tuple[str, ...]) -> None:
    done = run_child(HIDE.format(hidden=hidden) + textwrap.dedent(USE) + ROUND_TRIP)
    assert done.returncode == 0, done.stderr
    version, *modules = done.stdout.split("\n")[0].split()
    assert version.startswith("0.") and all(m.startswith("streaming.base.") for m in modules), done.stdout
    assert "samples [0, 1, 2]" in done.stdout, done.stdout


def test_missing_streaming_says_how_to_install_it() -> None:
    done = run_child(HIDE.format(hidden=("streaming",)) + textwrap.dedent(USE))
    assert done.returncode != 0
    assert "ModuleNotFoundError: mosaicml-streaming is not installed" in done.stderr, done.stderr
    assert "--no-deps mosaicml-streaming" in done.stderr, done.stderr
