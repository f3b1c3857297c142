"""
What an RE2 regexp asks of the text it is searched in, for the SQLite store's
fast ``term`` and ``name`` searches (pure: no I/O).

- :func:`analyze` reads a pattern once and returns a :class:`Plan`:

  - ``needs``: literals every text with a match contains (``AllOf``/``AnyOf``
    of strings, compared without case), which a trigram index can look up;
    ``None`` when the pattern needs no literal of 3 or more characters.
  - ``widened``: the pattern with ``^ $ \\A \\z`` written as their multi-line
    forms, so that it matches wherever the pattern matches *in a line* of a
    text: a search over many fields joined with ``\\n`` then finds at least
    every field the pattern matches (:class:`ChunkFilter`), and only the
    fields of chunks in which it finds something are searched one by one.

- Anything the reader does not know for sure (``\\Q...\\E``, octal escapes, an
  unusual repetition) gives no plan at all: the caller searches row by row,
  as before. The regexp itself always decides which jobs match
  (:meth:`hq.model.ListQuery.matches`); a plan only skips rows that cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Union

import attrs
import re2

#: Literals shorter than this cannot be looked up in a trigram index.
MIN_LITERAL = 3
#: Alternatives kept as exact strings before they become a looser condition.
_MAX_EXACT = 16
#: Literals in one index query at most (beyond: no index query).
_MAX_LITERALS = 32
#: Texts a chunk search tries one by one instead of splitting further.
_FEW = 4
#: Trigrams of one literal looked up at most.
_MAX_TRIGRAMS = 12
_REPEAT = re.compile(r"\{(\d+)(?:(,)(\d*))?\}")
#: Escapes of a class of characters (``\pN``, ``\p{Greek}`` read apart).
_CLASS_ESCAPES = frozenset("dDsSwWC")
#: ASCII letters whose case-insensitive RE2 match includes a non-ASCII
#: character (KELVIN SIGN, LATIN SMALL LETTER LONG S) the index may fold otherwise.
_UNSAFE_FOLDS = frozenset("kKsS")


@attrs.frozen
class AllOf:
    """
    Every one of the conditions holds.
    """

    items: tuple[Needs, ...]


@attrs.frozen
class AnyOf:
    """
    At least one of the conditions holds.
    """

    items: tuple[Needs, ...]


#: What a text with a match holds: ``None`` (nothing known), a string it
#: contains (compared without case), or a combination.
Needs = Union[None, str, AllOf, AnyOf]  # noqa: UP007 (a runtime alias, read by attrs)


def _all(a: Needs, b: Needs) -> Needs:
    if a is None:
        return b
    if b is None or a == b:
        return a
    items = [
        *(a.items if isinstance(a, AllOf) else (a,)),
        *(b.items if isinstance(b, AllOf) else (b,)),
    ]
    return AllOf(tuple(items))


def _any(items: Sequence[Needs]) -> Needs:
    flat: list[Needs] = []
    for item in items:
        if item is None:
            return None
        for each in item.items if isinstance(item, AnyOf) else (item,):
            if each not in flat:
                flat.append(each)
    return flat[0] if len(flat) == 1 else AnyOf(tuple(flat))


@attrs.frozen
class _Info:
    """
    What a part of a pattern matches: exactly one of ``exact`` (when known
    and few), or texts that satisfy ``needs``.
    """

    exact: frozenset[str] | None = None
    needs: Needs = None

    def loose(self, shortest: int = MIN_LITERAL) -> Needs:
        """
        Return the condition every text this part matches satisfies (with
        literals of ``shortest`` characters or more).
        """
        if self.exact is None:
            return self.needs
        return _any([s if len(s) >= shortest else None for s in sorted(self.exact)])


_ANY = _Info()
_EMPTY = _Info(exact=frozenset([""]))


class _Unsure(Exception):
    """
    The pattern holds syntax the reader does not know for certain.
    """


def _then(a: _Info, b: _Info, shortest: int) -> _Info:
    if a.exact is not None and b.exact is not None and len(a.exact) * len(b.exact) <= _MAX_EXACT:
        return _Info(exact=frozenset(x + y for x in a.exact for y in b.exact))
    return _Info(needs=_all(a.loose(shortest), b.loose(shortest)))


def _either(branches: list[_Info], shortest: int) -> _Info:
    exact: set[str] = set()
    for branch in branches:
        if branch.exact is None:
            break
        exact |= branch.exact
    else:
        if len(exact) <= _MAX_EXACT:
            return _Info(exact=frozenset(exact))
    return _Info(needs=_any([branch.loose(shortest) for branch in branches]))


class _Reader:
    """
    A recursive-descent reader of RE2 syntax (Perl flavour, as
    :func:`hq.model._compile` compiles it) that computes an :class:`_Info`
    and writes the widened pattern as it goes.
    """

    def __init__(self, pattern: str, shortest: int) -> None:
        self.text = pattern
        self.shortest = shortest
        self.pos = 0
        self.fold = False
        self.out: list[str] = []

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, count: int = 1) -> str:
        taken = self.text[self.pos : self.pos + count]
        if len(taken) < count:
            raise _Unsure("unexpected end")
        self.pos += count
        self.out.append(taken)
        return taken

    def alternation(self) -> _Info:
        branches = [self.concatenation()]
        while self.peek() == "|":
            self.take()
            branches.append(self.concatenation())
        return branches[0] if len(branches) == 1 else _either(branches, self.shortest)

    def concatenation(self) -> _Info:
        # The exact strings of a run of parts grow part by part; a part that
        # is not exact ends the run, and what the run needs is kept.
        needs: Needs = None
        exact = True
        run = _EMPTY
        while self.peek() not in ("", "|", ")"):
            part = self.repetition()
            if part.exact is None:
                needs = _all(_all(needs, run.loose(self.shortest)), part.needs)
                exact, run = False, _EMPTY
                continue
            joined = _then(run, part, self.shortest)
            if joined.exact is None:
                needs = _all(needs, run.loose(self.shortest))
                exact, joined = False, part
            run = joined
        return run if exact else _Info(needs=_all(needs, run.loose(self.shortest)))

    def repetition(self) -> _Info:
        info = self.atom()
        while True:
            char = self.peek()
            if char in ("*", "?"):
                self.take()
                info = _Info(exact=info.exact | {""}) if char == "?" and info.exact else _ANY
            elif char == "+":
                self.take()
                info = _Info(needs=info.loose(self.shortest))
            elif char == "{":
                found = _REPEAT.match(self.text, self.pos)
                if found is None:
                    raise _Unsure("a brace that is not a repetition")
                self.take(found.end() - self.pos)
                info = _ANY if int(found.group(1)) == 0 else _Info(needs=info.loose(self.shortest))
            else:
                return info
            if self.peek() == "?":
                self.take()  # non-greedy: the same texts match

    def atom(self) -> _Info:
        char = self.peek()
        if char == "(":
            return self.group()
        if char == "[":
            return self.char_class()
        if char == "\\":
            return self.escape()
        self.pos += 1
        if char in ("^", "$"):
            # Beginning or end of the text: of a line in the widened pattern.
            self.out.append(f"(?m:{char})")
            return _EMPTY
        self.out.append(char)
        if char == ".":
            return _ANY
        return self.literal(char)

    def literal(self, char: str) -> _Info:
        if not char.isprintable() or char == "\x00":
            return _ANY
        if self.fold and char.lower() != char.upper():
            if not char.isascii() or char in _UNSAFE_FOLDS:
                return _ANY
        return _Info(exact=frozenset([char]))

    def group(self) -> _Info:
        self.take()
        saved = self.fold
        if self.peek() == "?":
            self.take()
            if self.peek() in ("P", "<"):
                if self.peek() == "P":
                    self.take()
                if self.peek() != "<":
                    raise _Unsure("(?P= or another group form")
                end = self.text.find(">", self.pos)
                if end < 0:
                    raise _Unsure("unclosed group name")
                self.take(end + 1 - self.pos)
            else:
                fold = self.fold
                negated = False
                while self.peek() in ("i", "m", "s", "U", "-"):
                    flag = self.take()
                    if flag == "-":
                        negated = True
                    elif flag == "i":
                        fold = not negated
                closing = self.take()
                if closing == ")":
                    # Flags for the rest of the enclosing group.
                    self.fold = fold
                    return _EMPTY
                if closing != ":":
                    raise _Unsure("unknown group flag")
                self.fold = fold
        info = self.alternation()
        if self.peek() != ")":
            raise _Unsure("unclosed group")
        self.take()
        self.fold = saved
        return info

    def char_class(self) -> _Info:
        # Exact (the characters it holds) for a small class of plain
        # characters and ranges, outside (?i); any character otherwise.
        self.take()
        plain = not self.fold
        members: set[str] = set()
        if self.peek() == "^":
            self.take()
            plain = False
        if self.peek() == "]":
            members.add(self.take())
        while True:
            char = self.peek()
            if char == "":
                raise _Unsure("unclosed class")
            if char == "]":
                self.take()
                break
            if char == "\\":
                self.class_escape()
                plain = False
            elif self.text.startswith("[:", self.pos):
                end = self.text.find(":]", self.pos + 2)
                if end < 0:
                    raise _Unsure("[: without :]")
                self.take(end + 2 - self.pos)
                plain = False
            elif self.text.startswith("-[", self.pos + 1):
                raise _Unsure("a range that ends with [")
            elif self.text.startswith("-", self.pos + 1) and self.text[
                self.pos + 2 : self.pos + 3
            ] not in ("", "]", "\\"):
                span = self.take(3)
                first, last = span[0], span[2]
                if ord(last) - ord(first) >= _MAX_EXACT:
                    plain = False
                else:
                    members.update(chr(code) for code in range(ord(first), ord(last) + 1))
            else:
                members.add(self.take())
        if not plain or not members or len(members) > _MAX_EXACT:
            return _ANY
        if any(not member.isprintable() or member == "\x00" for member in members):
            return _ANY
        return _Info(exact=frozenset(members))

    def class_escape(self) -> None:
        self.take()
        char = self.take()
        if char in ("p", "P", "x") and self.peek() == "{":
            end = self.text.find("}", self.pos)
            if end < 0:
                raise _Unsure("unclosed brace")
            self.take(end + 1 - self.pos)
        elif char in ("p", "P"):
            self.take()
        elif char == "x":
            self.take(2)
        elif char.isdigit() or char == "Q":
            raise _Unsure("octal or quoted text")

    def escape(self) -> _Info:
        start = len(self.out)
        self.take()
        char = self.take()
        if char == "A" or char == "z":
            del self.out[start:]
            self.out.append("(?m:^)" if char == "A" else "(?m:$)")
            return _EMPTY
        if char in ("b", "B"):
            return _EMPTY
        if char.isascii() and not char.isalnum() and char.isprintable():
            return self.literal(char)
        if char in _CLASS_ESCAPES or char in "aftnrv":
            return _ANY
        if char in ("p", "P", "x"):
            del self.out[start:]
            self.pos -= 2
            self.class_escape()
            return _ANY
        raise _Unsure(f"escape \\{char}")


@attrs.frozen
class Plan:
    """
    What :func:`analyze` found in a pattern.
    """

    #: Literals every text with a match contains (compared without case).
    needs: Needs
    #: The pattern with text anchors made line anchors (see the module).
    widened: str


def analyze(pattern: str, shortest: int = MIN_LITERAL) -> Plan | None:
    """
    Return the :class:`Plan` of the RE2 regexp ``pattern`` (valid: already
    compiled) with literals of ``shortest`` characters or more, or ``None``
    when it holds syntax this reader is not sure of.
    """
    reader = _Reader(pattern, shortest)
    try:
        info = reader.alternation()
        if reader.pos != len(pattern):
            raise _Unsure("unbalanced parenthesis")
    except _Unsure:
        return None
    needs = info.loose(shortest)
    if _count(needs) > _MAX_LITERALS:
        needs = None
    return Plan(needs=needs, widened="".join(reader.out))


def _count(needs: Needs) -> int:
    if needs is None:
        return 0
    if isinstance(needs, str):
        return 1
    return sum(_count(item) for item in needs.items)


def holds(needs: Needs, text: str) -> bool:
    """
    Return whether ``text`` satisfies ``needs`` (what a trigram index finds:
    literals compared without case).
    """
    if needs is None:
        return True
    if isinstance(needs, str):
        return needs.lower() in text.lower()
    if isinstance(needs, AllOf):
        return all(holds(item, text) for item in needs.items)
    return any(holds(item, text) for item in needs.items)


def trigram_query(needs: Needs) -> str | None:
    """
    Return ``needs`` as a query of an FTS5 trigram index without positions
    (``detail=none``): each literal becomes the trigrams it holds, all
    required (a text holding the literal holds them), at most
    ``_MAX_TRIGRAMS`` of them. ``None`` when it needs nothing.
    """
    if needs is None:
        return None
    if isinstance(needs, str):
        trigrams = list(dict.fromkeys(needs[i : i + 3] for i in range(len(needs) - 2)))
        if len(trigrams) > _MAX_TRIGRAMS:
            # Spread over the literal; fewer trigrams only let more rows through.
            step = len(trigrams) / _MAX_TRIGRAMS
            trigrams = [trigrams[int(i * step)] for i in range(_MAX_TRIGRAMS)]
        quoted = ['"' + trigram.replace('"', '""') + '"' for trigram in trigrams]
        return quoted[0] if len(quoted) == 1 else "(" + " AND ".join(quoted) + ")"
    joiner = " AND " if isinstance(needs, AllOf) else " OR "
    return "(" + joiner.join(trigram_query(item) or "" for item in needs.items) + ")"


def digits_may_hold(needs: Needs) -> bool:
    """
    Return whether a text of ASCII digits alone (a job id) may satisfy ``needs``.
    """
    if needs is None:
        return True
    if isinstance(needs, str):
        return needs.isascii() and needs.isdigit()
    if isinstance(needs, AllOf):
        return all(digits_may_hold(item) for item in needs.items)
    return any(digits_may_hold(item) for item in needs.items)


def compile_pattern(pattern: str) -> Any:
    """
    Return ``pattern`` compiled as :class:`hq.model.ListQuery` compiles it
    (``re2.error`` when it is not valid).
    """
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


def compile_widened(plan: Plan) -> Any:
    """
    Return the compiled widened pattern of ``plan`` (``re2.error`` when RE2
    reads it otherwise than this module did: the caller then goes row by row).
    """
    return compile_pattern(plan.widened)


class ChunkFilter:
    """
    Finds, among many texts, the ones in which every one of some widened
    patterns finds a match, with few regexp searches: the texts joined with
    ``\n`` are searched at once, and only a half in which all of them find
    something is searched further.

    :param widened: the compiled widened patterns (:func:`compile_widened`).
    """

    def __init__(self, widened: Sequence[Any]) -> None:
        self._searches: list[Callable[[str | bytes], Any]] = [pattern.search for pattern in widened]

    def may_match(self, text: str | bytes) -> bool:
        """
        Return whether every pattern finds a match in ``text``.
        """
        return all(search(text) is not None for search in self._searches)

    def candidates(self, texts: Sequence[str]) -> list[int]:
        """
        Return the indexes (ascending) of the texts in which every pattern
        finds a match: among them is every text of which a field (a part
        between ``\n``) the original patterns match.
        """
        found: list[int] = []
        self._split(texts, 0, len(texts), found)
        return found

    def _split(self, texts: Sequence[str], low: int, high: int, found: list[int]) -> None:
        if high - low <= _FEW:
            # Splitting further would search more text than each one alone.
            found.extend(index for index in range(low, high) if self.may_match(texts[index]))
            return
        if not self.may_match("\n".join(texts[low:high])):
            return
        middle = (low + high) // 2
        self._split(texts, low, middle, found)
        self._split(texts, middle, high, found)


def both(a: Needs, b: Needs) -> Needs:
    """
    Return the condition that ``a`` and ``b`` both hold.
    """
    return _all(a, b)
