"""
The SQLite store's listing with ``term``/``name`` regexps, fast over a
million jobs (docs/performance.md, "Search").

The rows a listing shows are the ones :func:`hq.store.sql.page_of` keeps, in
the same order: the regexps of :meth:`hq.model.ListQuery.matches` decide,
row by row. What is fast is how few rows reach them:

- When the regexps need a literal (:func:`hq.store.search.analyze`) that a
  match can only find in name, comment or url, the trigram index
  ``jobs_search`` (schema: ``SEARCH_INDEX_STEP`` in
  :mod:`hq.store.sqlitefile`) names the candidate rows, in id order, in batches.
- The rows to look at (those candidates, or every row, by id ranges of
  about ``CHUNK_ROWS`` rows) go by chunks: SQLite joins each field of a
  chunk's rows into one text (``group_concat``, in C), one RE2 search
  (which releases the GIL) tells whether anything in the chunk may match,
  and only then are its rows split and looked at
  (:class:`hq.store.search.ChunkFilter`), then read whole. When the index
  names nearly every row, the search goes on as a scan.
- A pattern the analysis is not sure of gets ``None`` here: the caller reads
  every row, as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import re2

from hq.model import STATUSES, JobPage, ListQuery
from hq.store import sql
from hq.store.search import (
    ChunkFilter,
    Needs,
    analyze,
    both,
    compile_pattern,
    compile_widened,
    digits_may_hold,
    trigram_query,
)

#: Rows per chunk the scan aims at (one RE2 search each).
CHUNK_ROWS = 4096
#: Candidate ids read from the index at first; doubled per batch up to ``CHUNK_ROWS``.
FIRST_BATCH = 256
#: Rows waiting to be indexed that a search reads beside the index at most;
#: beyond (just after an upgrade, or a huge batch), the search scans.
MAX_WAITING = 20_000
#: Candidates that are at least this share of the rows of their id range: scan instead.
DENSE = 0.5
#: The id range a scan looks at first (about a second of ids); it then grows
#: or shrinks toward ``CHUNK_ROWS`` rows.
FIRST_SPAN = 1 << 32
_MAX_ID = (1 << 63) - 1
#: Ids of a chunk read back as a list at most (bound parameters).
_IN_LIMIT = 2000
#: A chunk: its rows, their fields joined, their ids when read (see ``_chunk_text``).
_Chunk = tuple[int, bytes, "str | None"]


def _status_text(now: int | None) -> str:
    """
    Return the SQL of a row's status as :meth:`hq.model.ListQuery.matches`
    sees it: ``scheduled`` for a waiting job due after ``now`` (``run_after``
    is its due time), when the query has a time.
    """
    if now is None:
        return "status"
    scheduled = f"status = 'waiting' AND run_after > {int(now)}"
    return f"CASE WHEN {scheduled} THEN 'scheduled' ELSE status END"


def search_page(conn: sqlite3.Connection, query: ListQuery) -> JobPage | None:
    """
    Return the page of ``query`` (a listing with a ``term`` or ``name``
    regexp), exactly as :func:`hq.store.sql.page_of` over every row would,
    or ``None`` when a regexp is one the analysis is not sure of.
    """
    term = analyze(query.term) if query.term else None
    name = analyze(query.name) if query.name else None
    if (query.term and term is None) or (query.name and name is None):
        return None
    try:
        chunks = ChunkFilter([compile_widened(plan) for plan in (term, name) if plan is not None])
    except re2.error:
        return None
    # The name regexp looks at names only; the term at every field.
    fields = ["name", "comment", "url"] if query.term else ["name"]
    in_status = in_id = False
    if query.term:
        compiled = compile_pattern(query.term)
        in_status = any(compiled.search(status) for status in STATUSES)
        # Literals of any length: a term that needs a letter never matches an id.
        short = analyze(query.term, shortest=1)
        in_id = short is None or digits_may_hold(short.needs)
        if in_id:
            fields.append("id")
        if in_status:
            fields.append(_status_text(query.now))
    needs: Needs = None
    if term is not None and not in_id and not in_status:
        needs = term.needs
    if name is not None:
        needs = both(needs, name.needs)
    search = _Search(conn, query, chunks, fields)
    # One snapshot for the statements of the search: the rows of a chunk are
    # read again, and must be the same rows.
    conn.execute("BEGIN")
    try:
        if needs is not None:
            rows = search.indexed(trigram_query(needs) or "")
        else:
            rows = search.scanned(query.begin, True)
        return sql.page_of(query, rows)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")


class _Search:
    """
    One search: reads the candidate rows of a listing, chunk by chunk.
    """

    def __init__(
        self, conn: sqlite3.Connection, query: ListQuery, chunks: ChunkFilter, fields: list[str]
    ) -> None:
        self._conn = conn
        self._reverse = query.reverse
        self._begin = query.begin
        self._chunks = chunks
        self._where, self._args = sql.list_filters(query, "GLOB", sql.glob_prefilter)
        self._fields = fields
        self._order = " ORDER BY id DESC" if query.reverse else " ORDER BY id"

    def _condition(self, extra: str) -> str:
        return " WHERE " + " AND ".join([*self._where, extra])

    def _chunk_text(self, extra: str, extra_args: list[Any]) -> _Chunk:
        """
        Return how many rows a chunk holds, its fields joined with newlines
        (UTF-8: RE2 reads it as it is) and, when the listing has filters of
        its own, its ids (``,``-separated).
        """
        # The separator as a literal: char(10) would be called once per row.
        aggregates = [f"CAST(group_concat({field}, '\n') AS BLOB)" for field in self._fields]
        if self._where:
            # Reading the rows again by id costs less than filtering the range again.
            aggregates.append(f"CASE WHEN count(*) <= {_IN_LIMIT} THEN group_concat(id) END")
        count, *texts = self._conn.execute(
            f"SELECT count(*), {', '.join(aggregates)} FROM jobs{self._condition(extra)}",
            [*self._args, *extra_args],
        ).fetchone()
        ids = texts.pop() if self._where else None
        return count, b"\n".join(text for text in texts if text is not None), ids

    def _verified(
        self, extra: str, extra_args: list[Any], chunk: _Chunk | None = None, matched: bool = False
    ) -> Iterator[Any]:
        """
        Yield, in listing order, the whole rows of a chunk (the rows of the
        listing that ``extra`` selects) the widened regexps may match;
        ``chunk`` is its :meth:`_chunk_text` when already read, ``matched``
        whether the regexps are known to find something in it.
        """
        count, joined, ids_text = chunk or self._chunk_text(extra, extra_args)
        if not count or not (matched or self._chunks.may_match(joined)):
            return
        text = " || char(10) || ".join(
            f"CAST({field} AS TEXT)" if field == "id" else field for field in self._fields
        )
        if ids_text is not None:
            chunk_ids = [int(each) for each in ids_text.split(",")]
            condition = f" WHERE id IN ({', '.join('?' * len(chunk_ids))})"
            args: list[Any] = chunk_ids
        else:
            condition = self._condition(extra)
            args = [*self._args, *extra_args]
        rows = self._conn.execute(
            f"SELECT id, {text} FROM jobs{condition}{self._order}", args
        ).fetchall()
        ids = [rows[index][0] for index in self._chunks.candidates([row[1] for row in rows])]
        for start in range(0, len(ids), 500):
            some = ids[start : start + 500]
            marks = ", ".join("?" * len(some))
            yield from self._conn.execute(
                f"{sql.SELECT} WHERE id IN ({marks}){self._order}", some
            ).fetchall()

    def scanned(self, start: int | None, inclusive: bool) -> Iterator[Any]:
        """
        Yield, in listing order, the rows of the listing from ``start`` on
        that the widened regexps may match, reading every row by id ranges.
        """
        low, high = self._conn.execute(
            "SELECT (SELECT min(id) FROM jobs), (SELECT max(id) FROM jobs)"
        ).fetchone()
        if low is None:
            return
        if self._reverse:
            at = high if start is None else (start if inclusive else start - 1)
        else:
            at = low if start is None else (start if inclusive else start + 1)
        span = FIRST_SPAN
        # One range's regexp search runs on a helper thread while SQLite reads
        # the next range here: both release the GIL, so they overlap.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hq-search") as searcher:
            previous: tuple[str, list[Any], _Chunk, Future[bool] | None] | None = None
            while at >= low if self._reverse else at <= high:
                if self._reverse:
                    end = max(-_MAX_ID, at - span)
                    extra, extra_args = "id > ? AND id <= ?", [end, at]
                else:
                    end = min(_MAX_ID, at + span)
                    extra, extra_args = "id >= ? AND id < ?", [at, end]
                chunk = self._chunk_text(extra, extra_args)
                found = searcher.submit(self._chunks.may_match, chunk[1]) if chunk[0] else None
                if previous is not None:
                    yield from self._found(*previous)
                previous = (extra, extra_args, chunk, found)
                at, span = end, _next_span(span, chunk[0])
            if previous is not None:
                yield from self._found(*previous)

    def _found(
        self, extra: str, extra_args: list[Any], chunk: _Chunk, found: Future[bool] | None
    ) -> Iterator[Any]:
        if found is not None and found.result():
            yield from self._verified(extra, extra_args, chunk, matched=True)

    def indexed(self, match: str) -> Iterator[Any]:
        """
        Yield, in listing order, the rows of the listing that the trigram
        index names for ``match`` or that wait to be indexed, and that the
        widened regexps may match. With too many rows waiting, a scan.
        """
        waiting = [
            row[0]
            for row in self._conn.execute(
                "SELECT id FROM jobs_search_new ORDER BY id LIMIT ?", (MAX_WAITING + 1,)
            )
        ]
        if len(waiting) > MAX_WAITING:
            yield from self.scanned(self._begin, True)
            return
        if self._reverse:
            waiting.reverse()
        if self._begin is not None:
            waiting = [i for i in waiting if _after(i, self._begin, self._reverse, True)]
        bound, inclusive = self._begin, True
        size = FIRST_BATCH
        while True:
            statement = "SELECT rowid FROM jobs_search WHERE jobs_search MATCH ?"
            args: list[Any] = [match]
            if bound is not None:
                op = ("<" if self._reverse else ">") + ("=" if inclusive else "")
                statement += f" AND rowid {op} ?"
                args.append(bound)
            statement += " ORDER BY rowid DESC" if self._reverse else " ORDER BY rowid"
            ids = [row[0] for row in self._conn.execute(f"{statement} LIMIT ?", [*args, size])]
            full = len(ids) == size
            # The rows waiting to be indexed up to where this batch of the index ends.
            taken = [i for i in waiting if not full or not _after(i, ids[-1], self._reverse)]
            waiting = waiting[len(taken) :]
            batch = sorted({*ids, *taken}, reverse=self._reverse)
            if batch:
                yield from self._verified(f"id IN ({', '.join('?' * len(batch))})", batch)
            if not full:
                return
            (spread,) = self._conn.execute(
                "SELECT count(*) FROM jobs WHERE id BETWEEN ? AND ?", (min(ids), max(ids))
            ).fetchone()
            if len(ids) >= DENSE * spread:
                # The literal is in nearly every row: reading them all costs less.
                yield from self.scanned(ids[-1], False)
                return
            bound, inclusive = ids[-1], False
            size = min(CHUNK_ROWS, size * 2)


def _after(a: int, b: int, reverse: bool, inclusive: bool = False) -> bool:
    """
    Return whether id ``a`` comes after ``b`` in listing order (or is ``b``,
    when ``inclusive``).
    """
    if a == b:
        return inclusive
    return a < b if reverse else a > b


def _next_span(span: int, count: int) -> int:
    if count < CHUNK_ROWS // 2:
        return span * 2
    if count > CHUNK_ROWS * 2:
        return max(1, span // 2)
    return span
