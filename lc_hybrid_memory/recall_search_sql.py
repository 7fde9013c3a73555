"""The recall search statement: one conversation's exact vector ranks and full-text ranks in
one statement, joined to their messages. SQL only (SQLAlchemy Core), no I/O.

Searches filter the conversation first (the primary key's leading column) and are exact within
it: never a global ANN index filtered afterwards, which returns fewer than k rows for a narrow
filter. The statement is built once per table (every value is a bound parameter), so it is
compiled once; its cost is the vector side's scan of the conversation's vectors:

- vector side: ``embedding <#> query`` over the conversation's rows older than the cut-off,
  top ``candidates`` by a bounded sort (ranks are numbered over those few rows only);
- lexical side: the ``<messages>_recall_lexical`` function (see
  :meth:`~lc_hybrid_memory.recall_schema.RecallTables.lexical_function_ddl`), called only when
  the query has a specific word left (the function is ``STRICT``: a NULL query costs nothing);
- the cut-off (the ``exclude_recent``-th newest message) read once, from the messages index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal,
    quoted_name,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql import Executable
from sqlalchemy.sql.functions import Function
from sqlalchemy.types import UserDefinedType

from .recall_schema import RecallTables, Vector, vector_literal

__all__ = ["Candidate", "SearchStatements"]

_MIN_BIGINT = -(2**63)
_MAX_BIGINT = 2**63 - 1
# Rows of the whole table the lexical side reads through the GIN index before it reads the
# conversation's own rows instead (a word that is not as specific as the statistics said).
LEXICAL_MAX_MATCHES = 2000


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
    """The search statement over one set of recall tables, and its parameters.

    Example::

        sql = SearchStatements(RecallTables(store))
        rows = conn.execute(
            sql.statement(vectors=False),
            sql.params(key, query="order A7X", embedding=None, model=None, candidates=50,
                       exclude_recent=0, common=[], stopwords=["english_stem"]),
        )
    """

    def __init__(self, tables: RecallTables) -> None:
        self.t = tables
        self.lexemes, self.vectors = tables.lexemes, tables.vectors
        self.messages, self.mapping = tables.messages, tables.mapping
        self._built: dict[bool, Executable] = {}
        self._neighbours: Executable | None = None

    def statement(self, *, vectors: bool) -> Executable:
        """The search, with the vector side (``vectors``) or lexical only."""
        if vectors not in self._built:
            self._built[vectors] = self._build(vectors)
        return self._built[vectors]

    @staticmethod
    def params(
        key: Any,
        *,
        query: str,
        embedding: Sequence[float] | None,
        model: str | None,
        candidates: int,
        exclude_recent: int,
        common: Sequence[str],
        stopwords: Sequence[str],
    ) -> dict[str, Any]:
        params = {
            "conversation_key": key,
            "exclude_recent": exclude_recent,
            "query": query,
            "common": list(common),
            "stopwords": list(stopwords),
            "candidates": candidates,
            "max_matches": LEXICAL_MAX_MATCHES,
        }
        if embedding is not None:
            params["query_vector"] = vector_literal(embedding)
            params["model"] = model
        return params

    def _cutoff(self, key: Any) -> Any:
        """Row id from which messages are excluded: the ``exclude_recent``-th newest one."""
        c = self.messages.c
        exclude = bindparam("exclude_recent", type_=Integer)
        newest = (
            select(c.id)
            .where(and_(c.conversation_id >= key, c.conversation_id <= key))
            .order_by(c.conversation_id.desc(), c.id.desc())
            .offset(func.greatest(exclude - 1, 0))
            .limit(1)
            .scalar_subquery()
        )
        # Fewer messages than exclude_recent: every one of them is recent.
        before = case((exclude > 0, func.coalesce(newest, _MIN_BIGINT)), else_=_MAX_BIGINT)
        cutoff = select(cast(before, BigInteger).label("before")).cte("cutoff")
        return select(cutoff.c.before).scalar_subquery()

    def _vector_ranks(self, key: Any, before: Any) -> Any:
        v = self.vectors.c
        query_vector = cast(bindparam("query_vector", type_=Text), Vector())
        # Unit-length vectors: inner product orders like cosine and costs less.
        distance = v.embedding.op("<#>", return_type=Float())(query_vector).label("distance")
        side = (
            select(v.message_id, distance)
            .where(
                v.conversation_id == key,
                v.model == bindparam("model", type_=Text),
                v.embedding.isnot(None),
                v.message_id < before,
            )
            .order_by(distance)
            .limit(bindparam("candidates", type_=Integer))
            .cte("vector_side")
        )
        rank = func.row_number().over(order_by=(side.c.distance, side.c.message_id.desc()))
        return select(side.c.message_id, rank.label("vector_rank")).cte("vector_ranks")

    def _lexical_ranks(self, key: Any, before: Any) -> Any:
        schema = self.mapping.schema
        found = Function(
            quoted_name(self.t.lexical_function_name, True),
            key,
            _specific_words_tsquery(self.t.text_search_config),
            before,
            bindparam("candidates", type_=Integer),
            bindparam("max_matches", type_=Integer),
            packagenames=(quoted_name(schema, True),) if schema else (),
        ).table_valued(column("message_id", BigInteger), column("rank", Float))
        side = found.alias("lexical_side")
        rank = func.row_number().over(order_by=(side.c.rank.desc(), side.c.message_id.desc()))
        return select(side.c.message_id, rank.label("lexical_rank")).cte("lexical_ranks")

    def _build(self, vectors: bool) -> Executable:
        c = self.messages.c
        key = bindparam("conversation_key", type_=c.conversation_id.type)
        before = self._cutoff(key)
        lexical = self._lexical_ranks(key, before)
        if vectors:
            vector = self._vector_ranks(key, before)
            found = (
                select(
                    func.coalesce(vector.c.message_id, lexical.c.message_id).label("message_id"),
                    vector.c.vector_rank,
                    lexical.c.lexical_rank,
                )
                .select_from(
                    vector.outerjoin(
                        lexical, vector.c.message_id == lexical.c.message_id, full=True
                    )
                )
                .subquery("found")
            )
        else:
            found = select(
                lexical.c.message_id,
                literal(None, Integer).label("vector_rank"),
                lexical.c.lexical_rank,
            ).subquery("found")
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

    def neighbours_stmt(self) -> Executable:
        """The ``neighbours`` messages before and after each of the ``hit_ids`` (older than the
        ``exclude_recent`` cut-off): ``(hit, row, payload, role, content, uid, created_at)``."""
        if self._neighbours is None:
            self._neighbours = self._build_neighbours()
        return self._neighbours

    def _build_neighbours(self) -> Executable:
        c, m = self.messages.c, self.mapping
        key = bindparam("conversation_key", type_=c.conversation_id.type)
        before = self._cutoff(key)
        hits = (
            func.unnest(bindparam("hit_ids", type_=ARRAY(BigInteger)))
            .table_valued(column("hit", BigInteger))
            .render_derived(name="hits")
        )
        count = bindparam("neighbours", type_=Integer)
        columns = [
            c.id,
            *self.t.message_columns(),
            (c.message_uid if m.message_uid is not None else literal(None)).label("uid"),
            (c.created_at if m.created_at is not None else literal(None)).label("at"),
        ]
        in_conversation = and_(c.conversation_id >= key, c.conversation_id <= key)
        earlier = (
            select(*columns)
            .where(in_conversation, c.id < hits.c.hit)
            .order_by(c.conversation_id.desc(), c.id.desc())
            .limit(count)
            .lateral("earlier")
        )
        later = (
            select(*columns)
            .where(in_conversation, c.id > hits.c.hit, c.id < before)
            .order_by(c.conversation_id, c.id)
            .limit(count)
            .lateral("later")
        )
        return union_all(
            *(
                select(hits.c.hit, *side.c).select_from(hits.join(side, true()))
                for side in (earlier, later)
            )
        )


def _specific_words_tsquery(config: str) -> Any:
    """A ``tsquery`` matching any specific word of the ``query`` parameter: not one of the
    ``common`` lexemes, and not a stop word of the ``stopwords`` dictionaries (``ts_lexize``
    gives a stop word no lexeme). Such words carry no information and drown the rare ones; with
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
            bindparam("query", type_=Text),
            bindparam("common", type_=ARRAY(Text)),
            bindparam("stopwords", type_=ARRAY(Text)),
        )
        .columns(column("tsquery", _TSQUERY))
        .scalar_subquery()
    )


class _TSQueryType(UserDefinedType):
    cache_ok = True

    def get_col_spec(self, **kw: Any) -> str:
        return "tsquery"


_TSQUERY = _TSQueryType()
