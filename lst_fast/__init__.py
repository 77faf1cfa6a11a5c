"""lst_fast: fast Level Set Traversal for exploring the blind spots of vision models.

Level Set Traversal (Balasubramanian et al., "Exploring Geometry of Blind Spots in Vision Models",
NeurIPS 2023) moves a source image towards an arbitrary target image while keeping the classifier's
confidence in the source class. ``lst_fast.traverse_batch`` is the fast implementation;
``lst_fast.reference.traverse_batch`` is the readable reference it is tested against.
"""

from lst_fast.fast import traverse_batch
from lst_fast.settings import TraversalSettings
from lst_fast.traversal import TraversalResult

__all__ = ["traverse_batch", "TraversalResult", "TraversalSettings"]
__version__ = "0.1.0"
