"""Choosing the images of a sweep: the first ``num_samples`` images, in a seeded random order of the data set,
that the model classifies correctly with confidence above ``min_conf`` (algorithm §6). Files that cannot be
read are skipped, named and recorded (or, strictly, stop the sweep)."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from lst_fast.classifier import checked_logits, make_forward, model_guard
from lst_fast.data import UNLABELLED, UnreadableImage, readable_groups
from lst_fast.sweep.plan import candidate_order


@dataclass
class Selection:
    """The chosen images: data set indices, their labels and the model's confidence in them; and the files
    that were skipped because they cannot be read (``{"index", "file", "reason"}`` each, in scanning order)."""

    indices: list[int]
    labels: list[int]
    conf: list[float]
    scanned: int  # how many candidates were looked at (skipped files included)
    dataset_size: int
    skipped: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, content: dict) -> "Selection":
        """A selection as :meth:`to_json` wrote it (written before files were skipped: none skipped)."""
        fields = {k: content[k] for k in ("indices", "labels", "conf", "scanned", "dataset_size")}
        return cls(**fields, skipped=list(content.get("skipped", [])))


@torch.no_grad()
def select_images(
    model, normalizer, dataset, *, num_samples: int, min_conf: float, seed: int, batch_size: int,
    device: torch.device, workers: int = 2, strict: bool = False,
) -> Selection:
    """Scan the data set in a seeded random order until ``num_samples`` images qualify (or it runs out).

    An image qualifies if the model's top-1 class is its label and the top-1 probability is > ``min_conf``.
    Images without a label (``UNLABELLED``) take the prediction as their label, so only the confidence
    decides for them. A file that cannot be read is skipped (named once on stderr and recorded in
    ``Selection.skipped``); which files are skipped depends only on the files, so every process scanning the
    same data chooses the same images.

    Args:
        strict: raise at the first file that cannot be read instead of skipping it.

    Raises:
        UnreadableImage: with ``strict``, the first unreadable file in scanning order.
        ValueError: not one scanned file could be read.
    """
    forward = make_forward(model, normalizer)
    order = candidate_order(len(dataset), seed).tolist()
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chosen = Selection(indices=[], labels=[], conf=[], scanned=0, dataset_size=len(dataset))
    for chunk, group in zip(chunks, readable_groups(dataset, chunks, workers=workers)):
        unreadable = {index: (file, reason) for index, file, reason in group.unreadable}
        scores = {}
        if group.images is not None:
            with model_guard(model):
                probs = checked_logits(forward, group.images.to(device)).softmax(1).cpu()
            conf, predicted = probs.max(1)
            scores = dict(zip(group.indices, zip(group.labels, conf.tolist(), predicted.tolist())))
        for index in chunk:  # in scanning order, so that where the scan stops is the same with skipped files
            chosen.scanned += 1
            if index in unreadable:
                _skip(chosen, index, *unreadable[index], strict=strict)
                continue
            label, p, pred = scores[index]
            if (label == UNLABELLED or label == pred) and p > min_conf:
                chosen.indices.append(index)
                chosen.labels.append(pred)
                chosen.conf.append(p)
                if len(chosen) == num_samples:
                    return _checked(chosen)
    return _checked(chosen)


def _skip(chosen: Selection, index: int, file: str, reason: str, *, strict: bool) -> None:
    if strict:
        raise UnreadableImage(file, reason)
    chosen.skipped.append({"index": index, "file": file, "reason": reason})
    tqdm.write(f"lst-fast sweep: skipped {str(file)!r}, which cannot be read: {reason}", file=sys.stderr)


def _checked(chosen: Selection) -> Selection:
    if chosen.skipped and len(chosen.skipped) == chosen.scanned:
        first = chosen.skipped[0]
        raise ValueError(
            f"none of the {chosen.scanned} image files could be read (the first, {first['file']!r}: {first['reason']})"
        )
    if chosen.skipped:
        tqdm.write(f"lst-fast sweep: {len(chosen.skipped)} unreadable image file(s) skipped; the sweep folder's "
                   "selection.json lists them (--strict-images stops at the first instead)", file=sys.stderr)
    return chosen
