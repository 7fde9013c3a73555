"""The embedder of semantic recall: resolving the ``embeddings=`` option, the name its vectors
are stored under, and unit length (inner product then ranks like cosine similarity)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from langchain_core.embeddings import Embeddings

__all__ = ["embedder_name", "resolve_embeddings", "unit_vector"]


def resolve_embeddings(embeddings: Embeddings | str | None) -> Embeddings | None:
    """``"default"`` → the offline MiniLM embedder; an ``Embeddings`` as is; ``None`` → off."""
    if embeddings is None or isinstance(embeddings, Embeddings):
        return embeddings
    if embeddings == "default":
        from .embeddings import default_embeddings

        return default_embeddings()
    raise ValueError(
        f'embeddings must be "default", an Embeddings object or None, not {embeddings!r}'
    )


def embedder_name(embeddings: Embeddings) -> str:
    """The name vectors are stored under: the class and its model (a new one re-embeds)."""
    own = getattr(embeddings, "model_name", None)
    if isinstance(own, str) and own and type(embeddings).__module__.startswith("lc_hybrid_memory"):
        return own
    model = next(
        (
            value
            for attr in ("model", "model_name", "model_id", "deployment")
            if isinstance(value := getattr(embeddings, attr, None), str) and value
        ),
        None,
    )
    kind = type(embeddings).__name__
    size = getattr(embeddings, "size", None)  # langchain-core's fake embeddings
    if model is None and isinstance(size, int):
        model = f"{size}d"
    return f"{kind}:{model}" if model else kind


def unit_vector(vector: Sequence[float]) -> list[float]:
    """``vector`` scaled to length 1, so that inner product ranks like cosine similarity."""
    norm = math.hypot(*vector)
    return [x / norm for x in vector] if norm > 0 else list(vector)
