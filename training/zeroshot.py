"""Zero-shot classification from embeddings: prompt-ensemble class vectors, top-k, confusion.

As CLIP and LiT do it: every prompt (class name × template) is embedded and L2-normalised,
the prompts of a class are averaged and the mean re-normalised; an image's class scores are
cosines with those class vectors. Pure tensor code: the model comes in as ``encode_text``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


def class_embeddings(prompts: list[list[str]], encode_text: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """(C, D) unit vectors: per class, the re-normalised mean of its normalised prompt embeddings."""
    if not prompts or any(not p for p in prompts):
        raise ValueError("every class needs at least one prompt")
    flat = [text for class_prompts in prompts for text in class_prompts]
    embedded = F.normalize(encode_text(flat).float(), dim=-1)
    out, start = [], 0
    for class_prompts in prompts:
        out.append(embedded[start:start + len(class_prompts)].mean(0))
        start += len(class_prompts)
    return F.normalize(torch.stack(out), dim=-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[str, float | None]:
    """Share of rows whose true label is among the k highest logits (ties: lower class index first).

    ``top{k}`` is None when k exceeds the number of classes (it would be 1.0 by construction).
    """
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices
    rank = (order == labels[:, None]).float().argmax(1)
    return {f"top{k}": (int((rank < k).sum()) / max(1, rank.numel()) if k <= logits.shape[1] else None) for k in ks}


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    return torch.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)


def confusion_summary(matrix: torch.Tensor, names: list[str]) -> list[dict]:
    """Per class: images, correct, accuracy, and the class it is most often mistaken for."""
    rows = []
    for index, name in enumerate(names):
        row = matrix[index]
        total, correct = int(row.sum()), int(row[index])
        wrong = row.clone()
        wrong[index] = -1
        top = int(wrong.argmax()) if len(names) > 1 else index
        confused = int(wrong[top]) if len(names) > 1 else 0
        rows.append({"class": name, "images": total, "correct": correct,
                     "accuracy": correct / total if total else None,
                     "most_confused_with": names[top] if confused > 0 else None, "confused_count": confused})
    return rows


def classify(image_embeddings: torch.Tensor, class_vectors: torch.Tensor, labels: torch.Tensor,
             names: list[str]) -> dict:
    """Top-1/top-5, per-class summary and the confusion matrix (kept when there are ≤ 100 classes)."""
    logits = F.normalize(image_embeddings.float(), dim=-1) @ class_vectors.t()
    result = topk_accuracy(logits, labels)
    predictions = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, 0]
    matrix = confusion_matrix(predictions, labels, len(names))
    per_class = confusion_summary(matrix, names)
    present = [r["accuracy"] for r in per_class if r["accuracy"] is not None]
    result.update(images=int(labels.numel()), classes=len(names),
                  mean_per_class_accuracy=sum(present) / len(present) if present else None,
                  chance_top1=1.0 / len(names), per_class=per_class,
                  confusion=matrix.tolist() if len(names) <= 100 else None)
    return result
