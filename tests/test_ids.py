"""
Tests for hq.ids: the Go-compatible 64-bit id layout.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from hq.ids import EPOCH_MS, IdGenerator, first_id_at, id_to_ms


class IdTests(SynchronousTestCase):
    """
    Layout, order and monotonicity of ids.
    """

    def test_go_readme_sample_decodes(self) -> None:
        """The Go README's id 109192606348480512 is 2019-10-29T07:32:26.054Z, server 1."""
        job_id = 109192606348480512
        self.assertEqual(id_to_ms(job_id), 1572334346054)
        self.assertEqual((job_id >> 12) & 1023, 1)

    def test_layout(self) -> None:
        """ms since 2019 << 22 | server_id << 12 | sequence."""
        clock = Clock()
        clock.advance((EPOCH_MS + 1234) / 1000)
        ids = IdGenerator(7, clock)
        self.assertEqual(ids.next_id(), (1234 << 22) | (7 << 12))
        self.assertEqual(ids.next_id(), (1234 << 22) | (7 << 12) | 1)
        self.assertEqual(first_id_at(EPOCH_MS + 1234), 1234 << 22)

    def test_strictly_increasing_when_clock_moves_back(self) -> None:
        """A clock that moves back never makes a smaller or equal id."""
        clock = Clock()
        clock.advance(EPOCH_MS / 1000 + 100)
        ids = IdGenerator(0, clock)
        first = ids.next_id()
        clock.rightNow -= 50
        second = ids.next_id()
        self.assertGreater(second, first)

    def test_sequence_overflow_borrows_next_ms(self) -> None:
        """More than 4096 ids in one ms stay unique and increasing, without waiting."""
        clock = Clock()
        clock.advance(EPOCH_MS / 1000 + 1)
        ids = IdGenerator(3, clock)
        made = [ids.next_id() for _ in range(5000)]
        self.assertEqual(made, sorted(set(made)))

    def test_observe_stored_id_after_restart_with_clock_back(self) -> None:
        """After observing the store's max id, new ids are above it even with an old clock."""
        clock = Clock()
        clock.advance(EPOCH_MS / 1000 + 10)
        stored = (20_000 << 22) | (1023 << 12) | 4095
        ids = IdGenerator(0, clock)
        ids.observe(stored)
        self.assertGreater(ids.next_id(), stored)

    def test_server_id_range(self) -> None:
        """server_id outside 0..1023 is refused."""
        self.assertRaises(ValueError, IdGenerator, 1024, Clock())
