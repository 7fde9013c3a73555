"""The recall search statement: one conversation's exact vector ranks and full-text ranks in
one statement, joined to their messages. SQL only (SQLAlchemy Core), no I/O.

Searches filter the conversation first (the primary key's leading column) and are exact within
it: never a global ANN index filtered afterwards, which returns fewer than k rows for a narrow
filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Text, and_, bindparam, cast, column, func, literal, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import Executable
from sqlalchemy.types import UserDefinedType

from .recall_schema import RecallTables, Vector, vector_literal

__all__ = ["Candidate", "SearchStatements"]

_MIN_BIGINT = -(2**63)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A message found by either side of a search, with its rank on each (1 = best)."""

    id: int
    payload: str | None
    role: str | None
    content: str | None
    message_uid: str | None
    created_at: datetime | None
    vector_rank: int | None
    lexical_rank: int | None


class SearchStatements:
    """The search statement over one set of recall tables.

    Example::

        sql = SearchStatements(RecallTables(store))
        stmt = sql.search_stmt(key, query="order A7X", embedding=None, model=None,
                               candidates=50, exclude_recent=0)
    """

    def __init__(self, tables: RecallTables) -> None:
        self.t = tables
        self.lexemes, self.vectors = tables.lexemes, tables.vectors
        self.messages, self.mapping = tables.messages, tables.mapping

    def _cutoff(self, key: Any, exclude_recent: int) -> Any:
        """Row id from which messages are excluded: the ``exclude_recent``-th newest one."""
        c = self.messages.c
        if exclude_recent <= 0:
            return None
        newest = (
            select(c.id)
            .where(and_(c.conversation_id >= key, c.conversation_id <= key))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .offset(exclude_recent - 1)
            .limit(1)
            .scalar_subquery()
        )
        # Fewer messages than exclude_recent: every one of them is recent.
        return func.coalesce(newest, _MIN_BIGINT)

    def search_stmt(
        self,
        key: Any,
        *,
        query: str,
        embedding: Sequence[float] | None,
        model: str | None,
        candidates: int,
        exclude_recent: int,
        lexical: bool = True,
        common: Sequence[str] = (),
        stopwords: Sequence[str] = (),
    ) -> Executable:
        """One statement: the best ``candidates`` of each side, joined to their messages."""
        c = self.messages.c
        cutoff = self._cutoff(key, exclude_recent)
        sides = []
        if embedding is not None and model is not None:
            v = self.vectors.c
            # Unit-length vectors: inner product orders like cosine and costs less.
            distance = v.embedding.op("<#>", return_type=Float())(
                cast(literal(vector_literal(embedding), Text), Vector())
            )
            vec = (
                select(
                    v.message_id.label("message_id"),
                    func.row_number().over(order_by=distance).label("vector_rank"),
                )
                .where(v.conversation_id == key, v.model == model, v.embedding.isnot(None))
                .order_by(distance)
                .limit(candidates)
            )
            if cutoff is not None:
                vec = vec.where(v.message_id < cutoff)
            sides.append(vec.cte("vector_side"))
        if lexical:
            t = self.lexemes.c
            tsquery = _any_word_tsquery(self.t.text_search_config, query, common, stopwords)
            rank = func.ts_rank_cd(t.tsv, tsquery, 1)
            lex = (
                select(
                    t.message_id.label("message_id"),
                    func.row_number()
                    .over(order_by=(rank.desc(), t.message_id.desc()))
                    .label("lexical_rank"),
                )
                .where(t.conversation_id == key, t.tsv.op("@@")(tsquery))
                .order_by(rank.desc(), t.message_id.desc())
                .limit(candidates)
            )
            if cutoff is not None:
                lex = lex.where(t.message_id < cutoff)
            sides.append(lex.cte("lexical_side"))
        if not sides:
            raise ValueError("a search needs the vector side, the lexical side, or both")
        if len(sides) == 2:
            vec_cte, lex_cte = sides
            ids = select(
                func.coalesce(vec_cte.c.message_id, lex_cte.c.message_id).label("message_id"),
                vec_cte.c.vector_rank,
                lex_cte.c.lexical_rank,
            ).select_from(
                vec_cte.outerjoin(lex_cte, vec_cte.c.message_id == lex_cte.c.message_id, full=True)
            )
        else:
            side = sides[0]
            ids = select(
                side.c.message_id,
                side.c.vector_rank
                if "vector_rank" in side.c
                else literal(None).label("vector_rank"),
                side.c.lexical_rank
                if "lexical_rank" in side.c
                else literal(None).label("lexical_rank"),
            )
        found = ids.subquery("found")
        m = self.mapping
        return select(
            c.id,
            *self.t.message_columns(),
            c.message_uid if m.message_uid is not None else literal(None),
            c.created_at if m.created_at is not None else literal(None),
            found.c.vector_rank,
            found.c.lexical_rank,
        ).select_from(
            found.join(self.messages, and_(c.conversation_id == key, c.id == found.c.message_id))
        )

    @staticmethod
    def candidates(result: Any) -> list[Candidate]:
        return [Candidate(*row) for row in result]


def _any_word_tsquery(
    config: str, query: str, common: Sequence[str], stopwords: Sequence[str]
) -> Any:
    """A ``tsquery`` matching any specific word of ``query``: not one of the ``common``
    lexemes, and not a stop word of the ``stopwords`` dictionaries (``ts_lexize`` gives a stop
    word no lexeme). Such words carry no information and drown the rare ones; with
    ``plainto_tsquery`` every word would be required. NULL, matching nothing, if none is left.

    The parser never puts quotes or backslashes in a lexeme, so ``quote_literal`` gives the
    tsquery spelling of each.
    """
    return (
        text(
            "SELECT string_agg(quote_literal(lexeme), ' | ')::tsquery "
            f"FROM unnest(tsvector_to_array(to_tsvector('{config}'::regconfig, :query))) "
            "AS lexeme WHERE lexeme <> ALL(:common) AND NOT EXISTS (SELECT FROM "
            "unnest(CAST(:stopwords AS regdictionary[])) AS d WHERE ts_lexize(d, lexeme) = '{}')"
        )
        .bindparams(
            bindparam("query", query, type_=Text),
            bindparam("common", list(common), type_=ARRAY(Text)),
            bindparam("stopwords", list(stopwords), type_=ARRAY(Text)),
        )
        .columns(column("tsquery", _TSQUERY))
        .scalar_subquery()
    )


class _TSQueryType(UserDefinedType):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "tsquery"


_TSQUERY = _TSQueryType()
