"""Import ``streaming`` (mosaicml-streaming) where its vision datasets cannot be imported.

``streaming/__init__.py`` imports its dataset zoo (``streaming.vision``, ``.text``, ``.multimodal``)
before the core (``streaming.base``), and ``streaming.vision`` imports torchvision. sma uses the core
only (``StreamingDataset``, ``StreamingDataLoader``, ``MDSWriter``, storage, shared memory), and its
install leaves torchvision out (README, "Install"). Where torchvision is installed it may not load
either: every torchvision wheel on the package registry is a CUDA build, and next to the CPU torch build
its import dies with ``operator torchvision::nms does not exist``.

Either way the plain import fails. Then the ``streaming`` package is set up without running its
``__init__``, ``streaming.base`` is imported, and the names ``__init__`` would have taken from it are
copied onto the package, so ``streaming.StreamingDataset`` and ``streaming.base...`` work as usual;
only the dataset zoo is missing. A machine where the plain import works never sees this.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from types import ModuleType

log = logging.getLogger(__name__)

_PACKAGE = "streaming"


def _forget(prefixes: tuple[str, ...]) -> None:
    # A failed import leaves half-initialized modules behind; a retry must start from scratch.
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def _import_core_only() -> ModuleType:
    """``streaming`` with ``streaming.base``'s public names, its dataset zoo left out."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None:
        raise ModuleNotFoundError(
            "mosaicml-streaming is not installed; install it with the lock (README, 'Install') or "
            "`pip install --no-deps mosaicml-streaming` plus the dependencies pyproject.toml lists for it",
            name=_PACKAGE)
    package = importlib.util.module_from_spec(spec)  # not executed: __init__ would import the zoo
    sys.modules[_PACKAGE] = package
    try:
        base = importlib.import_module(f"{_PACKAGE}.base")
        package.__version__ = importlib.import_module(f"{_PACKAGE}._version").__version__
    except BaseException:
        _forget((_PACKAGE,))
        raise
    for name in base.__all__:
        setattr(package, name, getattr(base, name))
    return package


def import_streaming() -> ModuleType:
    """Return the ``streaming`` module; without its dataset zoo where that cannot be imported."""
    try:
        return importlib.import_module(_PACKAGE)
    except ModuleNotFoundError as e:
        if e.name == _PACKAGE:
            return _import_core_only()  # raises the explanation
        reason = f"{e.name} is not installed"
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        reason = f"torchvision does not match this torch build ({e})"
    log.info("importing streaming without its dataset zoo: %s", reason)
    _forget((_PACKAGE, "torchvision"))
    return _import_core_only()
