"""Image↔text retrieval recall, counted as CLIP and LiT count it, with several captions per image.

* text→image: each caption is a query; a hit at k when *its* image is among the k images most
  similar to it.
* image→text: each image is a query; a hit at k when *any* of its captions is among the k
  captions most similar to it.

Ties are broken by gallery order (a stable sort), so results are deterministic. Per language:
the captions of one language are the text gallery and queries; images without a caption in
that language are not image→text queries (the image gallery is always every image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KS = (1, 5, 10)


def _ranks(similarity: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """(Q, G) similarities -> (Q, G) rank of each gallery item for each query (0 = best)."""
    ranks = torch.empty(similarity.shape, dtype=torch.int32)
    positions = torch.arange(similarity.shape[1], dtype=torch.int32)
    for start in range(0, similarity.shape[0], chunk):
        block = similarity[start:start + chunk]
        order = torch.sort(block, dim=1, descending=True, stable=True).indices
        ranks[start:start + chunk].scatter_(1, order, positions.expand(block.shape[0], -1).contiguous())
    return ranks


def recall(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, owner: torch.Tensor,
           ks=KS) -> dict:
    """R@k both ways. ``owner[j]`` is the index of the image caption j belongs to."""
    owner = torch.as_tensor(owner, dtype=torch.long)
    images = F.normalize(image_embeddings.float(), dim=-1)
    texts = F.normalize(text_embeddings.float(), dim=-1)
    if texts.shape[0] != owner.shape[0]:
        raise ValueError(f"{texts.shape[0]} captions but {owner.shape[0]} owners")
    if owner.numel() and (owner.min() < 0 or owner.max() >= images.shape[0]):
        raise ValueError("a caption's owner is not an image index")
    similarity = texts @ images.t()  # (T, I)
    t2i_rank = _ranks(similarity).gather(1, owner[:, None]).squeeze(1)
    i2t_ranks = _ranks(similarity.t())  # (I, T)
    queries = torch.unique(owner)
    best = torch.full((images.shape[0],), torch.iinfo(torch.int32).max, dtype=torch.int32)
    for image in queries.tolist():
        best[image] = i2t_ranks[image, owner == image].min()
    best = best[queries]
    return {
        "images": int(images.shape[0]), "captions": int(texts.shape[0]), "image_queries": int(queries.numel()),
        "text_to_image": {f"R@{k}": int((t2i_rank < k).sum()) / max(1, t2i_rank.numel()) for k in ks},
        "image_to_text": {f"R@{k}": int((best < k).sum()) / max(1, best.numel()) for k in ks},
    }


def recall_by_language(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor, owner: torch.Tensor,
                       langs: list[str | None], ks=KS) -> dict[str, dict]:
    """:func:`recall` on the captions of each language (None → ``und``), every image in the gallery."""
    owner = torch.as_tensor(owner, dtype=torch.long)
    tags = ["und" if lang is None else lang for lang in langs]
    out = {}
    for lang in sorted(set(tags)):
        keep = torch.tensor([t == lang for t in tags])
        out[lang] = recall(image_embeddings, text_embeddings[keep], owner[keep], ks)
    return out
