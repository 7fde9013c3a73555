"""Fusing the two rankings of a recall search into the messages returned, best first.

Weighted reciprocal-rank fusion of the vector and the lexical ranks; identical texts collapse
to their newest occurrence. No I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langchain_core.messages import BaseMessage

from . import codec
from .recall_search_sql import Candidate

__all__ = ["RankFusion", "RecalledMessage", "with_neighbours"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecalledMessage:
    """A recalled message with where it is stored and how well it matched."""

    message: BaseMessage
    id: int
    message_uid: str | None
    role: str
    created_at: datetime | None
    score: float
    vector_rank: int | None
    lexical_rank: int | None
    neighbour_of: int | None = None  # the row id of the hit this message surrounds


def with_neighbours(
    hits: list[RecalledMessage], rows: list[tuple[Any, ...]]
) -> list[RecalledMessage]:
    """Each hit in its place with the messages around it, in the conversation's order; a
    message shown once (for the best hit it surrounds). ``rows``: the neighbours statement's."""
    around: dict[int, list[RecalledMessage]] = {}
    for hit_id, row_id, payload, role, content, uid, created_at in rows:
        cand = Candidate(row_id, payload, role, content, uid, created_at, None, None)
        message = _decode(cand)
        if message is None:
            continue
        around.setdefault(hit_id, []).append(
            RecalledMessage(
                message=message,
                id=row_id,
                message_uid=uid,
                role=codec.role_of(message),
                created_at=created_at,
                score=0.0,
                vector_rank=None,
                lexical_rank=None,
                neighbour_of=hit_id,
            )
        )
    shown = {hit.id for hit in hits}
    result: list[RecalledMessage] = []
    for hit in hits:
        group = sorted([*around.get(hit.id, []), hit], key=lambda r: r.id)
        for entry in group:
            if entry is hit or entry.id not in shown:
                shown.add(entry.id)
                result.append(entry)
    return result


def _decode(cand: Candidate) -> BaseMessage | None:
    try:
        if cand.payload is not None:
            return codec.decode(cand.payload)
        return codec.decode(codec.from_role_and_content(cand.role or "", cand.content))
    except codec.DecodeError:
        logger.error("skipping undecodable message %s in recall", cand.id)
        return None


def _text(cand: Candidate) -> str | None:
    """The text identical messages share: the ``content`` column, else the decoded text."""
    if cand.content is not None:
        return cand.content
    message = _decode(cand)
    return codec.plain_text(message) if message is not None else None


@dataclass(frozen=True, slots=True)
class RankFusion:
    """Weighted reciprocal-rank fusion: ``weight / (rrf_k + rank)`` summed over the sides."""

    rrf_k: int = 60
    vector_weight: float = 1.0
    lexical_weight: float = 0.2

    def score(self, cand: Candidate) -> float:
        score = 0.0
        if cand.vector_rank is not None:
            score += self.vector_weight / (self.rrf_k + cand.vector_rank)
        if cand.lexical_rank is not None:
            score += self.lexical_weight / (self.rrf_k + cand.lexical_rank)
        return score

    def fuse(self, candidates: list[Candidate], k: int) -> list[RecalledMessage]:
        """The ``k`` best candidates; identical texts collapse to the newest occurrence.

        Texts are compared by the ``content`` column where the table has one (the message's
        text), so only the messages returned are decoded.
        """
        scored = sorted(
            ((self.score(cand), cand) for cand in candidates),
            key=lambda item: (-item[0], -item[1].id),
        )
        best: dict[str, tuple[float, Candidate]] = {}
        for score, cand in scored:
            body = _text(cand)
            if body is None:
                continue
            seen = best.get(body)
            if seen is None:
                best[body] = (score, cand)
            elif cand.id > seen[1].id:  # same text, newer: keep the better score, newer row
                best[body] = (seen[0], cand)
        results: list[RecalledMessage] = []
        for score, cand in best.values():  # in score order (dicts keep insertion order)
            message = _decode(cand)
            if message is None:
                continue
            results.append(
                RecalledMessage(
                    message=message,
                    id=cand.id,
                    message_uid=cand.message_uid,
                    role=codec.role_of(message),
                    created_at=cand.created_at,
                    score=score,
                    vector_rank=cand.vector_rank,
                    lexical_rank=cand.lexical_rank,
                )
            )
            if len(results) == k:
                break
        return results
