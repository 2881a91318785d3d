"""Contrastive loss (InfoNCE over cosine similarities) and the cross-device gather it uses.

>>> import torch
>>> queries, documents = torch.eye(2), torch.eye(2)  # each query matches its own document exactly
>>> round(info_nce_loss(queries, documents, temperature=1.0).item(), 4)  # -log(e / (e + 1))
0.3133
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F


def info_nce_loss(
    queries: torch.Tensor,
    documents: torch.Tensor,
    *,
    temperature: float = 0.05,
    positive_offset: int = 0,
    excluded: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of each query against all documents; query i's positive is document `positive_offset + i`.

    queries (num_queries, dim), documents (num_documents, dim): typically the batch's positives followed by its hard
    negatives, gathered from every rank. `excluded` (num_queries, num_documents), True where a document is not a
    negative of that query (a duplicate of its positive): left out of its softmax. The paper code's scale 20 is
    `temperature=0.05`. `label_smoothing` e (Szegedy et al. 2016, as `F.cross_entropy`'s): the target puts 1 - e on
    the positive and spreads e evenly over every document in the query's softmax (excluded documents get none).

    >>> q, d = torch.eye(2), torch.eye(2)
    >>> same = F.cross_entropy(q @ d.T, torch.arange(2), label_smoothing=0.1)
    >>> torch.isclose(info_nce_loss(q, d, temperature=1.0, label_smoothing=0.1), same).item()
    True
    """
    scores = F.normalize(queries, dim=-1) @ F.normalize(documents, dim=-1).T / temperature  # (queries, documents)
    if excluded is not None:
        scores = scores.masked_fill(excluded, float("-inf"))
    labels = torch.arange(queries.shape[0], device=queries.device) + positive_offset
    if not label_smoothing:
        return F.cross_entropy(scores, labels)
    log_probabilities = F.log_softmax(scores, dim=-1)
    candidates = torch.isfinite(scores)  # the documents in each query's softmax
    positive = -log_probabilities.gather(1, labels[:, None]).squeeze(1)
    spread = -log_probabilities.masked_fill(~candidates, 0.0).sum(dim=-1) / candidates.sum(dim=-1)
    return ((1 - label_smoothing) * positive + label_smoothing * spread).mean()


def duplicate_documents(
    text_ids: dict[str, torch.Tensor],
    document_ids: torch.Tensor,
    positive_offset: int = 0,
    document_queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """(queries, documents) mask of false negatives: documents whose text is the query's positive or the query itself,
    and (with `document_queries`, the query each document is the positive of, -1 for hard negatives) the positives of
    other rows with the same query text, except the query's own positive (`TripletCollator`'s `text_ids`;
    `document_ids` and `document_queries` gathered like the documents).

    >>> ids = {"queries": torch.tensor([10, 11]), "positives": torch.tensor([20, 20])}  # both queries: positive 20
    >>> duplicate_documents(ids, torch.tensor([20, 20, 10])).tolist()  # positives, then a negative equal to query 0
    [[False, True, True], [True, False, False]]
    >>> same = {"queries": torch.tensor([10, 10, 12]), "positives": torch.tensor([20, 21, 22])}  # one question twice
    >>> duplicate_documents(same, torch.tensor([20, 21, 22, 23]), 0, torch.tensor([10, 10, 12, -1])).tolist()
    [[False, True, False, False], [True, False, False, False], [False, False, False, False]]
    """
    candidates = document_ids[None, :]
    excluded = (candidates == text_ids["positives"][:, None]) | (candidates == text_ids["queries"][:, None])
    if document_queries is not None:
        excluded |= document_queries[None, :] == text_ids["queries"][:, None]
    rows = torch.arange(excluded.shape[0], device=excluded.device)
    excluded[rows, rows + positive_offset] = False
    return excluded


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllGatherWithGradient(torch.autograd.Function):
    """all_gather whose backward hands each rank the sum, over ranks, of the gradient of its own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered, dim=0)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        gradient = gradient.contiguous().clone()
        dist.all_reduce(gradient, op=dist.ReduceOp.SUM)  # every rank's loss depends on every rank's rows
        return gradient[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """(n, dim) per rank -> (world * n, dim) in rank order; differentiable (the backward sums each rank's share)."""
    if world_size() == 1:
        return tensor
    return _AllGatherWithGradient.apply(tensor)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """Integer ids of every rank, in rank order (no gradient)."""
    if world_size() == 1:
        return ids
    gathered = [torch.empty_like(ids) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, ids.contiguous())
    return torch.cat(gathered)


def contrastive_loss(
    query_embeddings: torch.Tensor,
    document_embeddings: torch.Tensor,
    *,
    temperature: float,
    gather: bool,
    text_ids: dict[str, torch.Tensor] | None = None,
    matryoshka_dims: tuple[int, ...] = (),
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """InfoNCE for this rank's queries against every rank's documents (in-batch, hard and cross-device negatives).

    document_embeddings holds this rank's positives first (row i for query i), then its hard negatives. With
    `text_ids` (`TripletCollator`), documents that duplicate a query's positive or the query, and other rows'
    positives for the same query text, are not its negatives.
    With `matryoshka_dims` (Kusupati et al. 2022), the mean of the loss of the full embeddings and of each prefix of
    that many dims (renormalised by the cosine): one scale for the loss with or without, and every size trained.
    `label_smoothing`: `info_nce_loss`'s (`--label_smoothing_factor`).

    >>> queries = torch.tensor([[1.0, 0.0, 5.0]])  # its positive (row 0) agrees on the first 2 dims only
    >>> documents = torch.tensor([[1.0, 0.0, -5.0], [0.0, 1.0, 5.0]])
    >>> full = contrastive_loss(queries, documents, temperature=1.0, gather=False)
    >>> prefix = contrastive_loss(queries[:, :2], documents[:, :2], temperature=1.0, gather=False)
    >>> both = contrastive_loss(queries, documents, temperature=1.0, gather=False, matryoshka_dims=(2,))
    >>> torch.isclose(both, (full + prefix) / 2).item(), round(full.item(), 3), round(prefix.item(), 3)
    (True, 2.026, 0.313)
    """
    gathered = gather and world_size() > 1
    offset = dist.get_rank() * document_embeddings.shape[0] if gathered else 0
    documents = gather_across_ranks(document_embeddings) if gathered else document_embeddings
    excluded = None
    if text_ids is not None:
        document_ids = gather_ids(text_ids["documents"]) if gathered else text_ids["documents"]
        owners = text_ids.get("document_queries")
        owners = gather_ids(owners) if gathered and owners is not None else owners
        excluded = duplicate_documents(text_ids, document_ids, offset, owners)
    losses = [
        info_nce_loss(
            query_embeddings[:, :dims],
            documents[:, :dims],
            temperature=temperature,
            positive_offset=offset,
            excluded=excluded,
            label_smoothing=label_smoothing,
        )
        for dims in (None, *matryoshka_dims)
    ]
    return losses[0] if len(losses) == 1 else torch.stack(losses).mean()
