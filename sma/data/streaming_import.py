"""Import ``streaming`` (mosaicml-streaming) on machines whose torchvision wheel does not match torch.

``streaming/__init__.py`` imports its vision module, which imports torchvision. Every torchvision wheel
on the package registry is a CUDA build; next to the CPU torch build its import dies with
``operator torchvision::nms does not exist`` and takes ``import streaming`` down with it, although
nothing we use from streaming touches vision ops. Declaring the two op schemas torchvision expects
(``nms`` and ``qnms``; declarations only, no kernels) lets the import finish.

The workaround runs only when the plain import fails with exactly that error, so a machine with a
working torchvision never sees it.
"""

from __future__ import annotations

import importlib
import logging
import sys
from types import ModuleType

import torch

log = logging.getLogger(__name__)

_OP_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None  # kept alive: dropping it would unregister the ops


def _declare_torchvision_ops() -> None:
    global _library
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        for schema in _OP_SCHEMAS:
            _library.define(schema)


def _forget(prefixes: tuple[str, ...]) -> None:
    # A failed import leaves half-initialized modules behind; a retry must start from scratch.
    for name in [m for m in sys.modules if m.split(".")[0] in prefixes]:
        del sys.modules[name]


def import_streaming() -> ModuleType:
    """Return the ``streaming`` module, declaring torchvision's missing op schemas if needed."""
    try:
        return importlib.import_module("streaming")
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        log.info("torchvision does not match this torch build (%s); declaring its op schemas", e)
    _forget(("streaming", "torchvision"))
    _declare_torchvision_ops()
    return importlib.import_module("streaming")
