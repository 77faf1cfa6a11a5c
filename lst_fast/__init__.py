"""lst_fast: fast Level Set Traversal for exploring the blind spots of vision models.

Level Set Traversal (Balasubramanian et al., "Exploring Geometry of Blind Spots in Vision Models",
NeurIPS 2023) moves a source image towards an arbitrary target image while keeping the classifier's
confidence in the source class. ``lst_fast.traverse_batch`` is the fast implementation;
``lst_fast.reference.traverse_batch`` is the readable reference it is tested against.
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use (below)
    from lst_fast.fast import traverse_batch
    from lst_fast.settings import TraversalSettings
    from lst_fast.traversal import TraversalResult

__all__ = ["traverse_batch", "TraversalResult", "TraversalSettings"]
__version__ = "0.1.0"

# Each public name's module, imported on first use (PEP 562), so that ``lst-fast --help`` and the light modules
# (lst_fast.settings, lst_fast.sweep.config) come without torch.
_HOMES = {"traverse_batch": "lst_fast.fast", "TraversalResult": "lst_fast.traversal",
          "TraversalSettings": "lst_fast.settings"}


def __getattr__(name: str):
    if name in _HOMES:
        value = getattr(importlib.import_module(_HOMES[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # a submodule, as after an eager import
    raise AttributeError(f"module 'lst_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_HOMES))
