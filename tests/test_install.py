"""The lock (.ci/requirements.lock) against pyproject.toml, and the installed set against itself."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / ".ci" / "requirements.lock"
# What mosaicml-streaming declares and sma leaves out (pyproject.toml says why).
LEFT_OUT = frozenset(canonicalize_name(n) for n in (
    "torchvision", "oci", "paramiko", "google-cloud-storage", "azure-identity",
    "azure-storage-blob", "azure-storage-file-datalake"))


def locked() -> dict[str, Version]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_lock_pins_every_requirement_of_pyproject_within_its_range() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    pins = locked()
    for spec in project["dependencies"] + extras["dev"] + extras["streaming"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        if name == "torch":
            assert name not in pins, "torch is installed first, as the build the machine needs"
            continue
        assert name in pins, f"{spec} is not in {LOCK.name}; run .ci/lock"
        assert req.specifier.contains(pins[name], prereleases=True), f"{spec}: locked {pins[name]}"
    assert not pins.keys() & LEFT_OUT, pins.keys() & LEFT_OUT


def test_installed_packages_of_the_lock_have_their_requirements() -> None:
    """``pip check``: nothing the lock installs lacks a dependency, but for streaming's left-out ones."""
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    pins = locked()
    broken = []
    for line in done.stdout.splitlines():
        m = re.match(r"(\S+) \S+ (?:requires (\S+?),|has requirement (\S+?)[=<>!~;,])", line)
        if not m or canonicalize_name(m[1]) not in pins:
            continue  # another package of this interpreter, not one the lock installs
        needed = canonicalize_name(Requirement(m[2] or m[3]).name)
        if canonicalize_name(m[1]) == "mosaicml-streaming" and needed in LEFT_OUT:
            continue
        broken.append(line)
    assert not broken, "\n".join(broken)
