"""Choosing the images of a sweep: the first ``num_samples`` images, in a seeded random order of the data set,
that the model classifies correctly with confidence above ``min_conf`` (spec section 6)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from lst_fast.data import UNLABELLED, group_loader
from lst_fast.sweep.plan import candidate_order
from lst_fast.classifier import checked_logits, make_forward, model_guard


@dataclass
class Selection:
    """The chosen images: data set indices, their labels and the model's confidence in them."""

    indices: list[int]
    labels: list[int]
    conf: list[float]
    scanned: int  # how many candidates were looked at
    dataset_size: int

    def __len__(self) -> int:
        return len(self.indices)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, content: dict) -> "Selection":
        return cls(**{k: content[k] for k in ("indices", "labels", "conf", "scanned", "dataset_size")})


@torch.no_grad()
def select_images(
    model, normalizer, dataset, *, num_samples: int, min_conf: float, seed: int, batch_size: int,
    device: torch.device, workers: int = 2,
) -> Selection:
    """Scan the data set in a seeded random order until ``num_samples`` images qualify (or it runs out).

    An image qualifies if the model's top-1 class is its label and the top-1 probability is > ``min_conf``.
    Images without a label (``UNLABELLED``) take the prediction as their label, so only the confidence
    decides for them.
    """
    forward = make_forward(model, normalizer)
    order = candidate_order(len(dataset), seed).tolist()
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chosen = Selection(indices=[], labels=[], conf=[], scanned=0, dataset_size=len(dataset))
    for chunk, (images, labels) in zip(chunks, group_loader(dataset, chunks, workers=workers)):
        with model_guard(model):
            probs = checked_logits(forward, images.to(device)).softmax(1).cpu()
        conf, predicted = probs.max(1)
        for index, label, p, pred in zip(chunk, labels.tolist(), conf.tolist(), predicted.tolist()):
            chosen.scanned += 1
            if (label == UNLABELLED or label == pred) and p > min_conf:
                chosen.indices.append(index)
                chosen.labels.append(pred)
                chosen.conf.append(p)
                if len(chosen) == num_samples:
                    return chosen
    return chosen
