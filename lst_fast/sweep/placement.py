"""Which share of a sweep this process does, and on which device.

A sweep is cut into numbered work units. Processes are numbered globally: ``--shard I/N`` (Slurm array tasks,
separate machines sharing a file system) times the ranks of ``torchrun`` (``RANK``/``WORLD_SIZE``), so
worker ``I * WORLD_SIZE + RANK`` of ``N * WORLD_SIZE`` takes the units whose index is congruent to it. Each unit
is computed by exactly one worker, nothing is padded or repeated, and a unit's result does not depend on which
worker computes it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping

import torch


@dataclass(frozen=True)
class Placement:
    """This process's place among all the processes of a sweep."""

    index: int  # global worker number in [0, count)
    count: int
    local_rank: int  # torchrun's LOCAL_RANK (0 without torchrun): picks the GPU on this machine
    label: str  # for messages, e.g. "shard 1/4 rank 0/2"

    def owns(self, unit_index: int) -> bool:
        return unit_index % self.count == self.index


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard I/N needs N >= 1 and 0 <= I < N, got {text!r}")
    return index, count


def resolve_placement(shard: tuple[int, int] | None = None, env: Mapping[str, str] = os.environ) -> Placement:
    """Combine ``--shard`` with the torchrun environment (absent: one process)."""
    shard_index, shard_count = (0, 1) if shard is None else shard
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard index must be in [0, {shard_count}), got {shard_index}")
    rank, world = _env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE", 1)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"torchrun environment is inconsistent: RANK={rank}, WORLD_SIZE={world}")
    parts = []
    if shard_count > 1:
        parts.append(f"shard {shard_index}/{shard_count}")
    if world > 1:
        parts.append(f"rank {rank}/{world}")
    return Placement(
        index=shard_index * world + rank,
        count=shard_count * world,
        local_rank=_env_int(env, "LOCAL_RANK", 0),
        label=" ".join(parts) or "single process",
    )


def resolve_device(requested: str | None, placement: Placement) -> torch.device:
    """``None``: ``cuda:LOCAL_RANK`` when CUDA is available, else CPU. A bare ``"cuda"`` also means the local
    rank's GPU; an explicit ``"cuda:K"`` or ``"cpu"`` is used as given."""
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except RuntimeError as err:
        raise ValueError(f"device must be a torch device like 'cpu' or 'cuda:0', got {requested!r}") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {requested!r} asked for, but CUDA is not available here")
        if device.index is None:
            device = torch.device("cuda", placement.local_rank)
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device} does not exist: {torch.cuda.device_count()} GPU(s) visible "
                f"(LOCAL_RANK={placement.local_rank}); start at most that many processes per machine"
            )
    return device


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None
