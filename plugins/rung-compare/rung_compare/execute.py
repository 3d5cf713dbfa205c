"""Sending a suite's requests: every backend at once, each within its own concurrency.

A hosted backend (rung.hosted.HostedBackend: openai, anthropic) gets its requests through
its async client, at most `concurrency` in flight (an asyncio semaphore of its own). A local
backend (torch, hf, jax) decodes them `concurrency` at a time as batches (`generate_batch`)
in a worker thread. All backends run side by side, so a suite takes about as long as its
slowest backend, not the sum of them. A failed request is that reply's error; the others go on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from rung.records import Completion, GenerationRequest

DEFAULT_CONCURRENCY = 8


@dataclass
class Reply:
    """A backend's answer to one request (or why there is none)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0  # until the reply was complete; a local batch's time for each of its requests
    model: str | None = None
    error: str | None = None
    cached: bool = False

    @classmethod
    def of(cls, completion: Completion, latency_s: float) -> Reply:
        usage = completion.usage
        return cls(completion.text, str(completion.finish_reason), usage.prompt_tokens, usage.completion_tokens,
                   latency_s, completion.model)

    def record(self) -> dict[str, Any]:
        """What the cache keeps."""
        out = asdict(self)
        out.pop("cached")
        out.pop("error")
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Reply:
        fields = {k: record[k] for k in ("text", "finish_reason", "prompt_tokens", "completion_tokens", "latency_s",
                                         "model") if k in record}
        return cls(**fields, cached=True)


@dataclass
class Work:
    """What one backend is to answer: its instance, its concurrency, the requests by cache key."""

    label: str
    backend: Any
    concurrency: int
    requests: dict[str, GenerationRequest]


def is_hosted(backend: Any) -> bool:
    from rung.hosted import HostedBackend

    return isinstance(backend, HostedBackend)


def concurrency_of(spec_concurrency: int | None, default: int | None, section: Any) -> int:
    """The suite entry's `concurrency`, else --concurrency, else the backend's own
    max_concurrency option, else DEFAULT_CONCURRENCY."""
    for value in (spec_concurrency, default, getattr(section, "max_concurrency", None)):
        if value is not None:
            return int(value)
    return DEFAULT_CONCURRENCY


def ask_all(works: Sequence[Work], on_reply: Callable[[str, str, Reply], None]) -> None:
    """Answer every work's requests, all backends at once; `on_reply(label, key, reply)` as each arrives."""
    if not any(w.requests for w in works):
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(_ask_all(works, on_reply))
        return
    # Called from inside a running loop (a notebook, Playwright's sync API): a loop of its own in a thread.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _ask_all(works, on_reply)).result()


async def _ask_all(works: Sequence[Work], on_reply: Callable[[str, str, Reply], None]) -> None:
    jobs = []
    for work in works:
        if not work.requests:
            continue
        if is_hosted(work.backend):
            jobs.append(_hosted(work, on_reply))
        else:
            jobs.append(asyncio.to_thread(_local, work, on_reply))
    await asyncio.gather(*jobs)


async def _hosted(work: Work, on_reply: Callable[[str, str, Reply], None]) -> None:
    semaphore = asyncio.Semaphore(work.concurrency)

    async def one(key: str, request: GenerationRequest) -> None:
        async with semaphore:
            start = time.perf_counter()
            try:
                completion = await work.backend.agenerate(request)
            except Exception as exc:  # one reply's failure; the one line the backend made of it
                on_reply(work.label, key, Reply(error=_one_line(exc), latency_s=time.perf_counter() - start))
                return
            on_reply(work.label, key, Reply.of(completion, time.perf_counter() - start))

    try:
        await asyncio.gather(*(one(key, request) for key, request in work.requests.items()))
    finally:
        await work.backend.aclient().close()  # this loop's client: the loop ends with the suite


def _local(work: Work, on_reply: Callable[[str, str, Reply], None]) -> None:
    items = list(work.requests.items())
    for start in range(0, len(items), work.concurrency):
        chunk = items[start:start + work.concurrency]
        began = time.perf_counter()
        try:
            completions = work.backend.generate_batch([r for _, r in chunk], max_concurrency=work.concurrency)
        except Exception:  # find which request failed: each alone
            for key, request in chunk:
                began = time.perf_counter()
                try:
                    on_reply(work.label, key, Reply.of(work.backend.generate(request), time.perf_counter() - began))
                except Exception as exc:
                    on_reply(work.label, key, Reply(error=_one_line(exc), latency_s=time.perf_counter() - began))
            continue
        took = time.perf_counter() - began
        for (key, _), completion in zip(chunk, completions):
            on_reply(work.label, key, Reply.of(completion, took))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
