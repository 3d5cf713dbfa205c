"""The byte automaton of a compiled schema: configurations of frames, one byte at a time,
states numbered as they are met, with their transitions and closing costs."""

from __future__ import annotations

import threading

from rung.decoding.structured.nodes import _AnyOf, _Array, _Literal, _Map, _Node, _Number, _Object, _String
from rung.decoding.structured.nodes import MAX_EXPONENT_DIGITS, MAX_FRACTION_DIGITS, MAX_INTEGER_DIGITS


# ----------------------------------------------------------------------------- the automaton
#
# A configuration is a stack (tuple) of frames, the innermost last; a state is the frozenset
# of configurations the bytes so far may be in (a number may have ended or go on; an anyOf
# follows each option). The empty configuration is the finished value. Parents sit in the
# phase they return to when the child on top of them is done.

_VALUE, _LITERAL, _KEY, _STRING, _NUMBER, _OBJECT, _ARRAY, _MAP = range(8)
_START, _AFTER, _NEXT, _COLON = range(4)
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPES = frozenset(b'"\\/bfnrt')
_DEAD = -1


def _start(node: _Node, b: int, rest: tuple) -> list[tuple]:
    """Configurations after byte `b` begins a value of `node` above `rest`."""
    if isinstance(node, _AnyOf):
        out: list[tuple] = []
        for option in node.options:
            out += _start(option, b, rest)
        return out
    if isinstance(node, _Literal):
        return _literal_step(node.values, 0, b, rest, lambda longer, pos: (_LITERAL, longer, pos))
    if isinstance(node, _String):
        return [rest + ((_STRING, node, 0, 0),)] if b == 0x22 else []
    if isinstance(node, _Number):
        if b == 0x2D:  # '-'
            return [rest + ((_NUMBER, node, 0, 0),)]
        if b == 0x30:  # '0': the integer part is done
            return [rest] if node.integer else [rest + ((_NUMBER, node, 1, 1),), rest]
        if b in _DIGITS:
            return [rest + ((_NUMBER, node, 2, 1),), rest]
        return []
    if isinstance(node, _Object):
        return [rest + ((_OBJECT, node, 0, _START),)] if b == 0x7B else []
    if isinstance(node, _Array):
        return [rest + ((_ARRAY, node, 0, _START),)] if b == 0x5B else []
    if isinstance(node, _Map):
        return [rest + ((_MAP, node, 0, _START),)] if b == 0x7B else []
    raise TypeError(node)


def _literal_step(values: tuple[bytes, ...], pos: int, b: int, rest: tuple, frame) -> list[tuple]:
    matched = [v for v in values if v[pos] == b]
    out = [rest] if any(len(v) == pos + 1 for v in matched) else []
    longer = tuple(v for v in matched if len(v) > pos + 1)
    if longer:
        out.append(rest + (frame(longer, pos + 1),))
    return out


def _step(config: tuple, b: int) -> list[tuple]:
    """Configurations after byte `b` in `config` (none: `b` does not fit)."""
    frame, rest = config[-1], config[:-1]
    tag = frame[0]
    if tag == _STRING:
        return _string_step(frame, b, rest)
    if tag == _VALUE:
        return _start(frame[1], b, rest)
    if tag == _LITERAL:
        return _literal_step(frame[1], frame[2], b, rest, lambda longer, pos: (_LITERAL, longer, pos))
    if tag == _NUMBER:
        return _number_step(frame, b, rest)
    if tag == _KEY:
        _, node, candidates, pos = frame
        out = []
        longer = []
        for i in candidates:
            key = node.keys[i]
            if key[pos] != b:
                continue
            if len(key) == pos + 1:
                out.append(rest + ((_OBJECT, node, i + 1, _AFTER), (_VALUE, node.values[i])))
            else:
                longer.append(i)
        if longer:
            out.append(rest + ((_KEY, node, tuple(longer), pos + 1),))
        return out
    if tag == _OBJECT:
        _, node, index, phase = frame
        if phase == _AFTER:
            if b == 0x2C and index < len(node.names):
                return [rest + ((_OBJECT, node, index, _NEXT),)]
            return [rest] if b == 0x7D and node.closes_from(index) else []
        if b == 0x22 and index < len(node.names):  # a key (after '{' or ',')
            return [rest + ((_KEY, node, node.candidates(index), 1),)]
        return [rest] if b == 0x7D and phase == _START and node.closes_from(0) else []
    if tag == _ARRAY:
        _, node, count, phase = frame
        if phase == _AFTER:
            if b == 0x2C and (node.max_items is None or count < node.max_items):
                return [rest + ((_ARRAY, node, count, _NEXT),)]
            return [rest] if b == 0x5D and count >= node.min_items else []
        if phase == _START and b == 0x5D:
            return [rest] if node.min_items == 0 else []
        if phase == _START and node.max_items == 0:
            return []
        return _start(node.items, b, rest + ((_ARRAY, node, count + 1, _AFTER),))
    if tag == _MAP:
        _, node, count, phase = frame
        if phase == _COLON:
            return [rest + ((_MAP, node, count, _AFTER), (_VALUE, node.values))] if b == 0x3A else []
        if phase == _AFTER:
            if b == 0x2C and (node.max_items is None or count < node.max_items):
                return [rest + ((_MAP, node, count, _NEXT),)]
            return [rest] if b == 0x7D and count >= node.min_items else []
        if b == 0x22 and (node.max_items is None or count < node.max_items):
            return [rest + ((_MAP, node, count + 1, _COLON), (_STRING, node.key, 0, 0))]
        return [rest] if b == 0x7D and phase == _START and node.min_items == 0 else []
    raise TypeError(frame)


def _string_step(frame: tuple, b: int, rest: tuple) -> list[tuple]:
    # sub: 0 plain; 1 after '\'; 2..5 after '\u' and (sub - 2) hex digits; 6 after '\uD' (then
    # 0-7: no surrogates); a tuple (need, low, high): continuation bytes of a UTF-8 character.
    _, node, count, sub = frame
    if sub == 0:
        if node.max_length is None and count > node.min_length:
            count = node.min_length  # the count matters no more: one state for the whole string
        if b == 0x22:
            return [rest] if count >= node.min_length else []
        if b < 0x20 or (node.max_length is not None and count >= node.max_length):
            return []
        if b == 0x5C:
            return [rest + ((_STRING, node, count + 1, 1),)]
        if b < 0x80:
            return [rest + ((_STRING, node, count + 1, 0),)]
        lead = _UTF8_LEADS.get(b)
        return [rest + ((_STRING, node, count + 1, lead),)] if lead is not None else []
    if sub == 1:
        if b in _ESCAPES:
            return [rest + ((_STRING, node, count, 0),)]
        return [rest + ((_STRING, node, count, 2),)] if b == 0x75 else []  # 'u'
    if isinstance(sub, tuple):
        need, low, high = sub
        if not low <= b <= high:
            return []
        return [rest + ((_STRING, node, count, 0 if need == 1 else (need - 1, 0x80, 0xBF)),)]
    if sub == 6:
        return [rest + ((_STRING, node, count, 4),)] if 0x30 <= b <= 0x37 else []
    if b not in _HEX:
        return []
    if sub == 2 and b in (0x64, 0x44):  # 'd', 'D'
        return [rest + ((_STRING, node, count, 6),)]
    return [rest + ((_STRING, node, count, 0 if sub == 5 else sub + 1),)]


# The bytes that may follow a UTF-8 lead byte (RFC 3629: no overlong forms, no surrogates).
_UTF8_LEADS: dict[int, tuple[int, int, int]] = {}
for _b in range(0xC2, 0xE0):
    _UTF8_LEADS[_b] = (1, 0x80, 0xBF)
for _b in range(0xE0, 0xF0):
    _UTF8_LEADS[_b] = (2, 0xA0 if _b == 0xE0 else 0x80, 0x9F if _b == 0xED else 0xBF)
for _b in range(0xF0, 0xF5):
    _UTF8_LEADS[_b] = (3, 0x90 if _b == 0xF0 else 0x80, 0x8F if _b == 0xF4 else 0xBF)


def _number_step(frame: tuple, b: int, rest: tuple) -> list[tuple]:
    # phase: 0 after '-'; 1 after a leading 0; 2 integer digits; 3 after '.'; 4 fraction
    # digits; 5 after 'e'; 6 after the exponent's sign; 7 exponent digits. A digit that may end
    # the number also leaves `rest` (the number done, the parent next).
    _, node, phase, digits = frame
    digit = b in _DIGITS
    if phase == 0:
        if b == 0x30:
            return [rest] if node.integer else [rest + ((_NUMBER, node, 1, 1),), rest]
        return [rest + ((_NUMBER, node, 2, 1),), rest] if digit else []
    if phase == 2 and digit:
        return [rest + ((_NUMBER, node, 2, digits + 1),), rest] if digits < MAX_INTEGER_DIGITS else []
    if node.integer:
        return []
    if phase in (1, 2):
        if b == 0x2E:
            return [rest + ((_NUMBER, node, 3, 0),)]
        return [rest + ((_NUMBER, node, 5, 0),)] if b in (0x65, 0x45) else []
    if phase == 3:
        return [rest + ((_NUMBER, node, 4, 1),), rest] if digit else []
    if phase == 4:
        if digit:
            return [rest + ((_NUMBER, node, 4, digits + 1),), rest] if digits < MAX_FRACTION_DIGITS else []
        return [rest + ((_NUMBER, node, 5, 0),)] if b in (0x65, 0x45) else []
    if phase in (5, 6):
        if phase == 5 and b in (0x2B, 0x2D):
            return [rest + ((_NUMBER, node, 6, 0),)]
        return [rest + ((_NUMBER, node, 7, 1),), rest] if digit else []
    if phase == 7 and digit and digits < MAX_EXPONENT_DIGITS:
        return [rest + ((_NUMBER, node, 7, digits + 1),), rest]
    return []


def _frame_cost(frame: tuple) -> int:
    """Bytes that finish this frame (its child, if any, done)."""
    tag = frame[0]
    if tag == _VALUE:
        return frame[1].minlen()
    if tag == _LITERAL:
        return min(len(v) for v in frame[1]) - frame[2]
    if tag == _STRING:
        _, node, count, sub = frame
        pending = sub[0] if isinstance(sub, tuple) else (0, 1, 4, 3, 2, 1, 3)[sub]
        return pending + max(0, node.min_length - count) + 1
    if tag == _NUMBER:
        return 1 if frame[2] in (0, 3, 5, 6) else 0
    if tag == _KEY:
        _, node, candidates, pos = frame
        return min(len(node.keys[i]) - pos + node.values[i].minlen() + node.after_cost(i + 1) for i in candidates)
    if tag == _OBJECT:
        _, node, index, phase = frame
        return node.after_cost(index) if phase == _AFTER else node.start_cost() if phase == _START \
            else node.key_cost(index)
    if tag == _ARRAY:
        _, node, count, phase = frame
        if phase == _AFTER:
            return node.after_cost(count)
        return node.start_cost() if phase == _START else node.items.minlen() + node.after_cost(count + 1)
    if tag == _MAP:
        _, node, count, phase = frame
        if phase == _COLON:
            return 1 + node.values.minlen() + node.after_cost(count)
        if phase == _AFTER:
            return node.after_cost(count)
        if phase == _START and node.min_items == 0:
            return 1
        return node.entry_cost() + node.after_cost(count + 1)
    raise TypeError(frame)


class _Automaton:
    """The schema's states, numbered as they are met, with their transitions and closing costs."""

    def __init__(self, root: _Node) -> None:
        self.lock = threading.RLock()
        self.states: list[frozenset] = []
        self._ids: dict[frozenset, int] = {}
        self.rows: list[list[int | None]] = []  # per state: the next state of each byte (None: not worked out)
        self.costs: list[int] = []  # per state: the fewest bytes that finish the JSON
        self.complete: list[bool] = []
        self.start = self._intern(frozenset([((_VALUE, root),)]))

    def _intern(self, state: frozenset) -> int:
        sid = self._ids.get(state)
        if sid is None:
            with self.lock:
                sid = self._ids.get(state)
                if sid is None:
                    sid = len(self.states)
                    self.states.append(state)
                    self.rows.append([None] * 256)
                    self.complete.append(() in state)
                    self.costs.append(min(sum(_frame_cost(f) for f in c) for c in state))
                    self._ids[state] = sid
        return sid

    def next(self, sid: int, b: int) -> int:
        """The state after byte `b` in state `sid` (_DEAD: `b` does not fit)."""
        row = self.rows[sid]
        nxt = row[b]
        if nxt is None:
            configs: list[tuple] = []
            for config in self.states[sid]:
                if config:
                    configs += _step(config, b)
            nxt = row[b] = self._intern(frozenset(configs)) if configs else _DEAD
        return nxt

    def feed(self, sid: int, data: bytes) -> int:
        for b in data:
            if sid == _DEAD:
                break
            sid = self.next(sid, b)
        return sid
