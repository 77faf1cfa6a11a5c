"""Loads the compiled kernels (``lst_fast._C``) if they were built, and says once when they were not."""

from __future__ import annotations

import warnings
from types import ModuleType

_warned = False


def cpu_kernels() -> ModuleType | None:
    """The C++/OpenMP extension module, or None (with a one-time warning) when it is not built."""
    global _warned
    try:
        from lst_fast import _C  # type: ignore[attr-defined]
    except ImportError as err:
        if not _warned:
            warnings.warn(
                f"lst_fast: the compiled CPU kernels are not available ({err}); falling back to PyTorch. "
                "Reinstall with `pip install -e .` on a machine with a C++ compiler to build them.",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned = True
        return None
    return _C
