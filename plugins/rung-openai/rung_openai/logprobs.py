"""OpenAI's log-probability JSON (as the SDK parses it) to rung's `TokenLogprob` records.

Two shapes:

- chat: ``choices[].logprobs.content[] = {token, logprob, bytes, top_logprobs: [{token, logprob}]}``
  (also in stream chunks);
- completions: ``choices[].logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob}],
  text_offset}``, where with ``echo`` the prompt's tokens come first (the first one's logprob
  and top_logprobs null: nothing predicts it).

Neither shape carries token ids. A record's `id` is the id the request itself sent (the
prompt of a token-id request, position by position) and -1 where the server did not say
(generated tokens, text prompts): reading an id back from a token's text is not reliable
(one text may be several ids, a piece of a character shows as U+FFFD).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rung.records import TokenLogprob

UNKNOWN_ID = -1


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _kept(ranked: tuple[tuple[str, float], ...], top: int | None) -> tuple[tuple[str, float], ...]:
    return ranked if top is None else ranked[:top] if top else ()


def chat_entries(content: Sequence[Any] | None, top: int | None) -> tuple[TokenLogprob, ...]:
    """The records of chat's ``logprobs.content``; `top` most likely tokens kept at each (None:
    all the server sent)."""
    out = []
    for item in content or ():
        alternatives = tuple((str(alt.token), float(alt.logprob)) for alt in (item.top_logprobs or ()))
        out.append(TokenLogprob(token=str(item.token), id=UNKNOWN_ID, logprob=_float(item.logprob),
                                top=_kept(alternatives, top)))
    return tuple(out)


def completion_entries(logprobs: Any, top: int | None, ids: Sequence[int] | None = None) -> tuple[TokenLogprob, ...]:
    """The records of a completions choice's ``logprobs``, in order; `ids`: the ids of the first
    tokens where the request sent them (its token-id prompt)."""
    if logprobs is None:
        return ()
    tokens = list(logprobs.tokens or ())
    values = list(logprobs.token_logprobs or ())
    tops = list(logprobs.top_logprobs or ())
    values += [None] * (len(tokens) - len(values))
    tops += [None] * (len(tokens) - len(tops))
    known = list(ids or ())
    out = []
    for i, (token, value, alternatives) in enumerate(zip(tokens, values, tops)):
        # a mapping token -> logprob; best first (a dict's order is the server's, not a ranking)
        ranked = sorted(((str(t), float(v)) for t, v in (alternatives or {}).items()), key=lambda tv: -tv[1])
        out.append(TokenLogprob(token=str(token), id=int(known[i]) if i < len(known) else UNKNOWN_ID,
                                logprob=_float(value), top=_kept(tuple(ranked), top) if value is not None else ()))
    return tuple(out)
