"""The work of a sweep, fixed by its configuration alone: who is paired with whom, the units, and their seeds.

Every random choice is drawn from a seed derived from (sweep seed, purpose, unit coordinates) with NumPy's
``SeedSequence``, never from the order in which units happen to run, so a resumed or sharded sweep makes
exactly the same choices as one uninterrupted process.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

# Purposes, the first word of every derived seed's spawn key.
_ORDER, _ROUND, _UNIT = 0, 1, 2
MAX_DERANGEMENT_TRIES = 1_000_000


def derived_seed(seed: int, *key: int) -> int:
    """A 63-bit seed for ``key`` under the sweep seed (independent streams for different keys)."""
    state = np.random.SeedSequence(seed, spawn_key=key).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def candidate_order(dataset_size: int, seed: int) -> np.ndarray:
    """The order in which data set images are considered for the sweep (a seeded shuffle)."""
    return rng(seed, _ORDER).permutation(dataset_size)


def unit_generator(seed: int, round_index: int, batch_index: int, device: torch.device) -> torch.Generator:
    """The generator of a traversal unit's start-point noise."""
    return torch.Generator(device).manual_seed(derived_seed(seed, _UNIT, round_index, batch_index))


def derangements(n: int, rounds: int, seed: int) -> np.ndarray:
    """(rounds, n) targets: row r maps source i to target ``out[r, i]``.

    Each row is a uniformly drawn derangement (no image is its own target), redrawn until no source meets
    a target it already had in an earlier round, so that the outputs of one source in any two rounds head to
    two different targets (the triangles of algorithm §5). That needs ``rounds <= n - 1``; such rows always
    exist (a Latin rectangle can always be extended).
    """
    if n < 2:
        raise ValueError(f"a sweep needs at least 2 images, got {n}")
    if not 1 <= rounds <= n - 1:
        raise ValueError(
            f"rounds must be between 1 and (number of images - 1) = {n - 1} so that every source gets a "
            f"different target in every round, got {rounds}"
        )
    taken = [np.arange(n)]  # the identity: nobody is their own target
    for r in range(rounds):
        draw = rng(seed, _ROUND, r)
        for _ in range(MAX_DERANGEMENT_TRIES):
            perm = draw.permutation(n)
            if not any((perm == row).any() for row in taken):
                break
        else:
            raise RuntimeError(f"no derangement for round {r} in {MAX_DERANGEMENT_TRIES} draws; use fewer rounds")
        taken.append(perm)
    return np.stack(taken[1:])


@dataclass(frozen=True)
class TraverseUnit:
    """LST for one batch of sources in one round."""

    index: int
    round: int
    batch: int
    sources: tuple[int, ...]  # positions in the selection
    targets: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"r{self.round:03d}_b{self.batch:05d}"


@dataclass(frozen=True)
class TriangleUnit:
    """Triangle statistics of one batch of sources, over every pair of rounds; needs those rounds' units."""

    index: int
    batch: int
    sources: tuple[int, ...]
    needs: tuple[TraverseUnit, ...]
    round_pairs: tuple[tuple[int, int], ...]

    @property
    def name(self) -> str:
        return f"b{self.batch:05d}"


@dataclass(frozen=True)
class Plan:
    targets: np.ndarray  # (rounds, n)
    traverse: tuple[TraverseUnit, ...]
    triangles: tuple[TriangleUnit, ...]

    @property
    def pairs(self) -> int:
        return int(self.targets.size)


def make_plan(n: int, rounds: int, batch_size: int, seed: int) -> Plan:
    """Traversal units in round-major order (unit index = round * batches + batch) and one triangle unit per
    batch of sources."""
    targets = derangements(n, rounds, seed)
    batches = [tuple(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]
    traverse = tuple(
        TraverseUnit(
            index=r * len(batches) + b, round=r, batch=b, sources=sources,
            targets=tuple(int(t) for t in targets[r, list(sources)]),
        )
        for r in range(rounds)
        for b, sources in enumerate(batches)
    )
    round_pairs = tuple(combinations(range(rounds), 2))
    triangles = tuple(
        TriangleUnit(
            index=b, batch=b, sources=sources, round_pairs=round_pairs,
            needs=tuple(traverse[r * len(batches) + b] for r in range(rounds)),
        )
        for b, sources in enumerate(batches)
    )
    return Plan(targets=targets, traverse=traverse, triangles=triangles)
