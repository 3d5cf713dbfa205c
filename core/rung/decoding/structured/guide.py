"""A schema against one vocabulary: the token ids each automaton state allows
(`TokenConstraint`, worked out once per state) and a row's walk through them (`TokenGuide`)."""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rung.decoding.structured.automaton import _DEAD, _STRING
from rung.decoding.structured.nodes import _AnyOf, _Array, _Literal, _Map, _Node, _Object
from rung.decoding.structured.vocabulary import Vocabulary

if TYPE_CHECKING:
    from rung.decoding.structured.schema import JsonSchema


@dataclasses.dataclass
class _Allowed:
    """The tokens allowed in one state: ids sorted by the bytes that close the JSON after them."""

    ids: list[int]
    closes: list[int]
    next: dict[int, int]  # token id -> state after it
    slices: dict[tuple, list[int]] = dataclasses.field(default_factory=dict)  # (count, stop ids) -> ids


class TokenConstraint:
    """A `JsonSchema` against one vocabulary: the token ids each state allows, worked out once.

    `guide(stop_ids, max_tokens)` gives a row's `TokenGuide`. `cache` is free for a
    framework's own per-(state, budget) tensors (the torch hook keeps its index tensors here),
    keyed by what `TokenGuide.allowed()` returns first.
    """

    def __init__(self, schema: JsonSchema, vocabulary: Vocabulary) -> None:
        self.schema, self.vocabulary = schema, vocabulary
        self.automaton = schema.automaton
        self._allowed: dict[int, _Allowed] = {}
        self.cache: dict[Any, Any] = {}
        needed = set(range(0x20, 0x7F))
        for node in _nodes(schema.root):
            if isinstance(node, _Literal):
                needed.update(b for v in node.values for b in v)
            elif isinstance(node, _Object):
                needed.update(b for k in node.keys for b in k)
        # Every byte a closing may need has a token of its own: the length guarantee holds.
        self.byte_complete = needed <= vocabulary.single_bytes

    @property
    def shortest(self) -> int:
        """Tokens of the shortest JSON (one byte a token: at most this many)."""
        return self.schema.shortest

    def guide(self, stop_ids: frozenset[int] | set[int], max_tokens: int) -> TokenGuide:
        return TokenGuide(self, frozenset(stop_ids), max_tokens)

    def allowed_in(self, sid: int) -> _Allowed:
        """The tokens state `sid` allows (the trie walked once, then cached)."""
        found = self._allowed.get(sid)
        if found is not None:
            return found
        automaton = self.automaton
        pairs: list[tuple[int, int, int]] = []  # (closing bytes after, id, next state)
        costs = automaton.costs
        root = self.vocabulary.root
        if _inside_free_string(automaton.states[sid]):
            steady = automaton.next(sid, 0x61)  # after any plain text: the same state as after 'a'
            pairs += [(costs[steady], i, steady) for i in self.vocabulary.plain_ids]
            root = self.vocabulary.other_root
        stack = [(root, sid)]
        step = automaton.next
        while stack:
            (_, children), state = stack.pop()
            row = automaton.rows[state]
            for b, child in children:
                nxt = row[b]
                if nxt is None:
                    nxt = step(state, b)
                if nxt == _DEAD:
                    continue
                ids, grandchildren = child
                if ids:
                    cost = costs[nxt]
                    pairs += [(cost, i, nxt) for i in ids]
                if grandchildren:
                    stack.append((child, nxt))
        pairs.sort()
        found = _Allowed([i for _, i, _ in pairs], [c for c, _, _ in pairs], {i: n for _, i, n in pairs})
        self._allowed[sid] = found
        return found


def _inside_free_string(state: frozenset) -> bool:
    """Whether every configuration is in the plain text of a string of no maxLength whose
    minLength is reached (any plain text then leads to one state)."""
    for config in state:
        if not config:
            return False
        frame = config[-1]
        if frame[0] != _STRING or frame[3] != 0 or frame[1].max_length is not None or frame[2] < frame[1].min_length:
            return False
    return True


def _nodes(root: _Node) -> list[_Node]:
    seen: dict[int, _Node] = {}
    todo = [root]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen[id(node)] = node
        if isinstance(node, _AnyOf):
            todo += node.options
        elif isinstance(node, _Object):
            todo += node.values
        elif isinstance(node, _Array):
            todo.append(node.items)
        elif isinstance(node, _Map):
            todo += [node.key, node.values]
    return list(seen.values())


class TokenGuide:
    """One row's constraint: which ids the next token may be, and the state after each.

    `allowed()` -> (key, ids): the ids (a list shared by every call with the same key; the key
    is hashable, for a framework's cached tensors). Once the JSON is complete, the stop ids are
    allowed (and, where the JSON could go on, e.g. a top-level number, its continuations);
    `finished` is true when the JSON is complete and the tokenizer has no stop id to end it,
    or nothing more fits: the loop ends the row there. `failed` is true after a token the
    constraint did not allow (a backend that does not apply the mask): the guide steps aside.
    """

    def __init__(self, constraint: TokenConstraint, stop_ids: frozenset[int], max_tokens: int) -> None:
        self.constraint = constraint
        self.automaton = constraint.automaton
        self.stop_ids = tuple(sorted(stop_ids))
        self.state = self.automaton.start
        self.remaining = max_tokens
        self.failed = False

    @property
    def complete(self) -> bool:
        return not self.failed and self.automaton.complete[self.state]

    @property
    def finished(self) -> bool:
        if self.failed or not self.complete:
            return False
        return not self.stop_ids or self.remaining <= 0

    def allowed(self) -> tuple[Any, list[int]]:
        """(key, ids) the next token may be, within the budget left."""
        entry = self.constraint.allowed_in(self.state)
        budget = self.remaining - 1  # tokens left after this one
        complete = self.automaton.complete[self.state]
        if entry.closes and entry.closes[-1] > budget:
            count = bisect.bisect_right(entry.closes, budget)
            if count == 0 and not complete:
                count = len(entry.ids)  # nothing fits (no token of one byte): the best there is
        else:
            count = len(entry.ids)
        stops = self.stop_ids if complete else ()
        ids = entry.slices.get((count, stops))
        if ids is None:
            ids = entry.slices[(count, stops)] = list(stops) + entry.ids[:count]
        return (self.constraint, self.state, count, stops), ids

    def advance(self, token: int) -> None:
        """The row took `token` (a stop id ends the row: nothing to do)."""
        self.remaining -= 1
        if self.failed or token in self.stop_ids:
            return
        nxt = self.constraint.allowed_in(self.state).next.get(int(token))
        if nxt is None:
            self.failed = True
        else:
            self.state = nxt


def start_guides(rows: Sequence[Any]) -> list[TokenGuide | None] | None:
    """Each row's guide (`Sampling.constraint`), or None when no row has a constraint (so an
    unconstrained loop does no extra work)."""
    if all(getattr(r, "constraint", None) is None for r in rows):
        return None
    return [r.constraint.guide(r.stop_ids, r.max_tokens) if r.constraint is not None else None for r in rows]
