"""
Tests for hq.store.search (what a regexp needs) and hq.store.sqlitesearch (the
SQLite store's fast ``term``/``name`` listing): the fast paths must give the
very page the plain scan gives, on tricky patterns and texts.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase, TestCase

from hq.ids import first_id_at
from hq.model import Job, JobState, ListQuery, Outcome
from hq.store import sql, sqlitesearch
from hq.store.search import (
    AllOf,
    AnyOf,
    ChunkFilter,
    Plan,
    analyze,
    compile_widened,
    trigram_query,
)
from hq.store.sqlite import SQLiteStore
from hq.store.sqlitefile import _SCHEMA, INDEX_BATCH, SEARCH_INDEX_STEP, index_some
from hq.store.sqlitesearch import search_page
from tests.schema_v4 import make_v4_data_dir, sample_rows

T0 = 1_700_000_000_000

#: Characters that make regexps and texts tricky: case pairs, the letters whose
#: case-insensitive match leaves ASCII (k: KELVIN SIGN, s: LONG S), newlines,
#: digits (ids), separators, a non-ASCII letter, RE2 and FTS5 syntax.
_TEXT = 'abcABkKsS\u212a\u017f01 -.\n"é*'

_ATOMS = st.one_of(
    st.sampled_from(list('abcABkKsSé01 -"')),
    st.sampled_from(
        [
            ".",
            r"\.",
            r"\d",
            r"\w",
            r"\s",
            r"\W",
            r"\n",
            "[ab]",
            "[^a]",
            "[a-c]",
            "[0-1]",
            "[]a]",
            "[a-]",
            r"[\d.]",
            "[[:alpha:]]",
            r"\pL",
            r"\p{Greek}",
            r"\x41",
            r"\x{e9}",
            "\u212a",
        ]
    ),
)
_ANCHORS = st.sampled_from(["^", "$", r"\A", r"\z", r"\b", r"\B", "(?m)", "(?i)", "(?s)", "(?-i)"])


def _patterns() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.one_of(
            st.lists(inner, min_size=1, max_size=5).map("".join),
            st.tuples(inner, inner).map("|".join),
            inner.map(lambda p: f"({p})"),
            inner.map(lambda p: f"(?:{p})"),
            inner.map(lambda p: f"(?i:{p})"),
            inner.map(lambda p: f"(?P<g>{p})"),
            st.tuples(
                inner, st.sampled_from(["*", "+", "?", "{2}", "{0,1}", "{1,}", "*?", "+?"])
            ).map(lambda t: f"(?:{t[0]}){t[1]}"),
        )

    return st.recursive(st.one_of(_ATOMS, _ANCHORS), extend, max_leaves=12)


def _plan(pattern: str) -> Plan:
    plan = analyze(pattern)
    assert plan is not None, pattern
    return plan


def _compile(pattern: str) -> Any:
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern, options)
    except re2.error:
        return None


def _fts(texts: list[str]) -> sqlite3.Connection:
    """
    Return an in-memory database holding ``texts`` as names in the search index.
    """
    conn = sqlite3.connect(":memory:")
    conn.execute(SEARCH_INDEX_STEP[0])
    conn.executemany(
        "INSERT INTO jobs_search (rowid, name, comment, url) VALUES (?, ?, '', '')",
        list(enumerate(texts)),
    )
    return conn


class AnalyzeTests(SynchronousTestCase):
    """
    The literals a regexp needs and its widened form.
    """

    def test_literals_of_common_patterns(self) -> None:
        """Plain words, alternations, optional parts and classes give their literals."""
        self.assertEqual(_plan("absent").needs, "absent")
        self.assertEqual(_plan("abc|def").needs, AnyOf(("abc", "def")))
        self.assertEqual(_plan("colou?r").needs, AnyOf(("color", "colour")))
        self.assertEqual(_plan(r"bench-\d{5}").needs, "bench-")
        self.assertEqual(_plan("abc(x|y)*def").needs, AllOf(("abc", "def")))
        self.assertEqual(_plan("gr[ae]y").needs, AnyOf(("gray", "grey")))

    def test_no_literal(self) -> None:
        """Short literals, repeats that may be absent and unsafe folds need nothing."""
        for pattern in ("a.*zq", "ab|cde", "(abc)*", "(?i)skip", r"\d+", "[a-z]{5}", "x?yz"):
            self.assertIsNone(_plan(pattern).needs, pattern)

    def test_unsure_syntax_has_no_plan(self) -> None:
        """Quoted text, octal escapes and odd braces are not guessed at."""
        for pattern in (r"\Qa.b\E", r"\123", "a{,2}", "a{x}", "[!-[]"):
            self.assertIsNone(analyze(pattern), pattern)

    def test_text_anchors_become_line_anchors(self) -> None:
        """^ $ \\A \\z are widened; inside a class or escaped they stay."""
        self.assertEqual(_plan(r"^a\Ab$\z").widened, "(?m:^)a(?m:^)b(?m:$)(?m:$)")
        self.assertEqual(_plan(r"[$^]\^\$").widened, r"[$^]\^\$")
        self.assertEqual(_plan(r"\p{^Greek}x").widened, r"\p{^Greek}x")

    def test_fts_query_quotes_trigrams(self) -> None:
        """Each literal is the AND of its trigrams, quotes doubled."""
        self.assertEqual(trigram_query('ab"c'), '("ab""" AND "b""c")')
        self.assertEqual(trigram_query(AnyOf(("abc", "xyz"))), '("abc" OR "xyz")')

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pattern=_patterns(), texts=st.lists(st.text(alphabet=_TEXT, max_size=10), max_size=6))
    def test_index_finds_every_text_with_a_match(self, pattern: str, texts: list[str]) -> None:
        """Every text the regexp matches holds what the trigram index is asked for."""
        regexp = _compile(pattern)
        plan = analyze(pattern)
        if regexp is None or plan is None or plan.needs is None:
            return
        conn = _fts(texts)
        self.addCleanup(conn.close)
        found = {
            row[0]
            for row in conn.execute(
                "SELECT rowid FROM jobs_search WHERE jobs_search MATCH ?",
                (trigram_query(plan.needs),),
            )
        }
        for index, text in enumerate(texts):
            if regexp.search(text):
                self.assertIn(index, found, (pattern, text, plan.needs))

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        pattern=_patterns(),
        rows=st.lists(
            st.lists(st.text(alphabet=_TEXT, max_size=8), min_size=1, max_size=3), max_size=9
        ),
    )
    def test_chunks_keep_every_row_with_a_match(self, pattern: str, rows: list[list[str]]) -> None:
        """A row whose field the regexp matches is a candidate of the chunk search."""
        regexp = _compile(pattern)
        plan = analyze(pattern)
        if regexp is None or plan is None:
            return
        chunks = ChunkFilter([compile_widened(plan)])
        candidates = chunks.candidates(["\n".join(fields) for fields in rows])
        for index, fields in enumerate(rows):
            if any(regexp.search(field) for field in fields):
                self.assertIn(index, candidates, (pattern, fields))


def _schema_file(path: str, version: int | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    for statements in _SCHEMA[:version]:
        for statement in statements:
            if isinstance(statement, str):
                conn.execute(statement)
            else:
                statement(conn)
    return conn


_JOB_TEXT = "abkK\u212a -./:\né0123"


@st.composite
def _jobs(draw: st.DrawFn) -> list[Job]:
    count = draw(st.integers(min_value=0, max_value=40))
    jobs = []
    for n in range(count):
        text = st.text(alphabet=_JOB_TEXT, max_size=8)
        state = draw(st.sampled_from(list(JobState)))
        failed = draw(st.booleans())
        jobs.append(
            Job(
                id=first_id_at(T0 + n * draw(st.integers(1, 3))) + n,
                name=draw(text),
                comment=draw(text),
                url="http://" + draw(text),
                state=state,
                canceled=draw(st.booleans()) and state is not JobState.FINISHED,
                finished_at=T0 if state is JobState.FINISHED else None,
                failure=failed and state is JobState.FINISHED,
                success=not failed and state is JobState.FINISHED,
                run_at=T0 + draw(st.sampled_from([0, 10_000_000])),
            )
        )
    return jobs


class SearchPageTests(SynchronousTestCase):
    """
    The fast listing on a real SQLite file equals the plain scan.
    """

    def _store_of(self, jobs: list[Job], indexed: int | None = None) -> sqlite3.Connection:
        """
        Return a database holding ``jobs``, the first ``indexed`` of them
        moved into the search index (``None``: all), the others waiting.
        """
        conn = _schema_file(":memory:")
        conn.executemany(sql.INSERT, [sql.job_row(job) for job in jobs])
        self.addCleanup(conn.close)
        while (indexed is None or indexed > 0) and index_some(conn, indexed or INDEX_BATCH):
            indexed = None if indexed is None else 0
        return conn

    def assert_same_page(self, conn: sqlite3.Connection, query: ListQuery) -> None:
        """The fast page (when there is one) is the plain scan's."""
        fast = search_page(conn, query)
        statement, args = sql.list_statement(query, "GLOB", sql.glob_prefilter)
        plain = sql.page_of(query, conn.execute(statement, args))
        if fast is not None:
            self.assertEqual(
                ([job.id for job in fast.jobs], fast.next_id),
                ([job.id for job in plain.jobs], plain.next_id),
                query,
            )

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        jobs=_jobs(),
        term=st.one_of(st.none(), _patterns(), st.text(alphabet=_JOB_TEXT, min_size=1, max_size=5)),
        name=st.one_of(st.none(), _patterns()),
        status=st.sampled_from([None, "waiting", "scheduled", "failure", "canceling"]),
        reverse=st.booleans(),
        limit=st.sampled_from([None, 1, 2, 5]),
        begin=st.sampled_from([None, 0, 5, 20]),
        indexed=st.sampled_from([None, 0, 3, 10]),
        changes=st.lists(
            st.tuples(st.integers(0, 39), st.sampled_from(["delete", "rename", "index"])),
            max_size=6,
        ),
    )
    def test_fast_page_is_the_plain_page(self, **kwargs: Any) -> None:
        """Random jobs, index states, changes and queries: the same jobs, order, next, hasNext."""
        jobs = kwargs.pop("jobs")
        indexed = kwargs.pop("indexed")
        changes = kwargs.pop("changes")
        for key in ("term", "name"):
            if kwargs[key] is not None and _compile(kwargs[key]) is None:
                return
        begin = kwargs.pop("begin")
        ids = sorted(job.id for job in jobs)
        if begin is not None and ids:
            begin = ids[min(begin, len(ids) - 1)]
        if not (kwargs["term"] or kwargs["name"]):
            return
        conn = self._store_of(jobs, indexed)
        for index, change in changes:
            if not jobs:
                break
            job_id = jobs[index % len(jobs)].id
            if change == "delete":
                conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            elif change == "rename":
                conn.execute("UPDATE jobs SET name = name || 'kb' WHERE id = ?", (job_id,))
            else:
                index_some(conn, 2)
        self.assert_same_page(conn, ListQuery(begin=begin, now=T0 + 1, **kwargs))

    def test_chunks_and_index_batches_over_many_rows(self) -> None:
        """Over many chunks and index batches, and dense candidates, pages are the plain ones."""
        self.patch(sqlitesearch, "CHUNK_ROWS", 64)
        self.patch(sqlitesearch, "FIRST_BATCH", 8)
        self.patch(sqlitesearch, "FIRST_SPAN", 1 << 20)
        jobs = [
            Job(
                id=first_id_at(T0 + n * 700) + n % 3,
                name=f"job-{n % 7}",
                comment="needle" if n % 150 == 7 else "hay",
                url=f"http://127.0.0.1/{n}",
                state=JobState.FINISHED,
                finished_at=T0,
                failure=n % 100 == 0,
                success=n % 100 != 0,
            )
            for n in range(1_500)
        ]
        conn = self._store_of(jobs, 700)
        for term in ("needle", "need.e", "ne+dle$", "^hay$", "job-3", "zzz", r"\d{4}9", "fail"):
            for reverse in (False, True):
                for limit in (None, 3, 100):
                    for begin in (None, jobs[500].id):
                        query = ListQuery(term=term, reverse=reverse, limit=limit, begin=begin)
                        self.assert_same_page(conn, query)
        self.assert_same_page(conn, ListQuery(name="job-[36]", term="need", limit=2))
        self.assert_same_page(conn, ListQuery(name="job-3", status="failure", limit=5))

    def test_a_status_word_is_looked_for_only_where_the_status_has_it(self) -> None:
        """
        The chunk text holds each row's status as the query's time shows it:
        a term found only in ``scheduled`` skips chunks of jobs that are
        merely waiting without looking at their rows one by one.
        """
        self.patch(sqlitesearch, "CHUNK_ROWS", 64)
        self.patch(sqlitesearch, "FIRST_SPAN", 1 << 20)
        jobs = [
            Job(
                id=first_id_at(T0 + n) + n,
                name="job",
                url="http://127.0.0.1/w",
                run_at=T0 + (10_000 if n % 200 == 0 else 0),
            )
            for n in range(500)
        ]
        conn = self._store_of(jobs)
        looked_at: list[int] = []
        candidates = ChunkFilter.candidates

        def counted(chunks: ChunkFilter, texts: Any) -> list[int]:
            looked_at.append(len(texts))
            return candidates(chunks, texts)

        self.patch(ChunkFilter, "candidates", counted)
        for now in (T0 + 20_000, None):
            for term in ("sched", "e", "uled$"):
                query = ListQuery(term=term, now=now)
                page = search_page(conn, query)
                assert page is not None
                self.assertEqual(page.jobs, [])
                self.assert_same_page(conn, query)
        self.assertEqual(looked_at, [])
        page = search_page(conn, ListQuery(term="sched", now=T0 + 500))
        assert page is not None
        self.assertEqual([job.id for job in page.jobs], [job.id for job in jobs[::200]])
        self.assertLess(sum(looked_at), 500)


class SearchIndexTests(TestCase):
    """
    The index in the store: filled on upgrade, kept in step with writes.
    """

    async def indexed(self, store: SQLiteStore) -> None:
        """Wait until the writer has moved every noted change into the index."""

        for _ in range(200):
            if not await store.search_backlog():
                return
            await deferLater(reactor, 0.02, lambda: None)
        self.fail("the search index was not filled")

    async def index_ids(self, store: SQLiteStore, literal: str) -> list[int]:
        await self.indexed(store)

        def call(conn: sqlite3.Connection) -> list[int]:
            return [
                row[0]
                for row in conn.execute(
                    "SELECT rowid FROM jobs_search WHERE jobs_search MATCH ? ORDER BY rowid",
                    (trigram_query(literal),),
                )
            ]

        return await store._read(call)

    async def test_version_4_file_is_upgraded_with_a_filled_index(self) -> None:
        """A version-4 file opens at the new version; its jobs are searchable at once and
        the writer fills the index with them."""
        data_dir = self.mktemp()
        finished = sample_rows("http://127.0.0.1:9")[0]
        rows = [
            dict(finished, id=first_id_at(T0 + n), url=f"http://127.0.0.1/{n}", name=f"old-{n}")
            for n in range(5)
        ]
        make_v4_data_dir(data_dir, rows)
        jobs = [Job(id=row["id"], url=row["url"]) for row in rows]
        store = SQLiteStore(data_dir, reactor)
        await store.open()
        self.addCleanup(store.close)
        page = await store.list_jobs(ListQuery(term="old-3"))
        self.assertEqual([job.id for job in page.jobs], [jobs[3].id])
        self.assertEqual(await self.index_ids(store, "old-"), [job.id for job in jobs])
        page = await store.list_jobs(ListQuery(term="old-3"))
        self.assertEqual([job.id for job in page.jobs], [jobs[3].id])

    async def test_index_follows_pushes_deletes_and_clean_up(self) -> None:
        """Created jobs are found; deleted and expired ones are gone from the index."""
        store = SQLiteStore(self.mktemp(), reactor)
        await store.open()
        self.addCleanup(store.close)
        jobs = [
            Job(id=first_id_at(T0 + n), url="http://127.0.0.1/", name=f"kept-{n}") for n in range(6)
        ]
        for job in jobs:
            await store.create(job)
        await store.push([Job(id=first_id_at(T0 + 10), url="http://x/", name="pushed")], 0)
        for job in jobs[:4]:
            await store.start(job.id, T0 + 20)
            await store.finish(job.id, Outcome(finished_at=T0 + 30, success=True))
        await store.delete(jobs[0].id)
        await store.delete_finished_before(T0 + 31, 2)
        await store.restart(jobs[3].id)
        remaining = [job.id for job in jobs if job.id not in (jobs[0].id, jobs[1].id, jobs[2].id)]
        self.assertEqual(await self.index_ids(store, "kept-"), remaining)
        self.assertEqual(await self.index_ids(store, "pushed"), [first_id_at(T0 + 10)])
        page = await store.list_jobs(ListQuery(term="kept-[0-9]"))
        self.assertEqual([job.id for job in page.jobs], remaining)
        check = await store._write(
            lambda conn, changes: conn.execute(
                "INSERT INTO jobs_search (jobs_search) VALUES ('integrity-check')"
            )
        )
        self.assertIsNotNone(check)
