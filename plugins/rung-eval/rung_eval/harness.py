"""lm-evaluation-harness over any rung backend: its `LM` API on a rung `Scorer`, and `run_harness`.

`rung eval --harness TASKS` runs the harness's own tasks (or tasks of an `include_path`
folder of task YAMLs) on whatever rung can score: `harness_lm(scorer)` answers the harness's
loglikelihood, loglikelihood_rolling and generate_until requests through
`rung_eval.scoring`, so a torch, hf or jax model is scored by its framework's objective and
`rung serve` or an OpenAI-compatible server by echo log-probabilities.

lm-eval is the optional extra `harness` of rung-eval, imported only here and only when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rung.errors import RungError
from rung.records import GenerationRequest

DEFAULT_MAX_GEN_TOKS = 256  # what the harness's hf model generates when a task gives no max_gen_toks


def _lm_eval() -> Any:
    try:
        import lm_eval
        import lm_eval.api.model  # noqa: F401
    except ImportError:
        raise RungError("the lm-evaluation-harness adapter needs lm-eval: pip install 'rung-eval[harness]'") from None
    return lm_eval


def generation_request(context: str, gen_kwargs: dict[str, Any]) -> GenerationRequest:
    """A harness generate_until request as rung's: raw text to continue, its `until` stops,
    max_gen_toks, greedy unless it samples (`do_sample` with a temperature)."""
    options = dict(gen_kwargs or {})
    until = options.pop("until", None) or ()
    stops = (until,) if isinstance(until, str) else tuple(until)
    max_tokens = int(options.pop("max_gen_toks", options.pop("max_tokens", DEFAULT_MAX_GEN_TOKS)))
    sample = bool(options.pop("do_sample", False))
    temperature = float(options.pop("temperature", 0.0) or 0.0) if sample else 0.0
    top_p = options.pop("top_p", None)
    return GenerationRequest(prompt=context, stop=stops, max_tokens=max_tokens, temperature=temperature,
                             top_p=float(top_p) if sample and top_p is not None else None, raw=True)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops` (the harness cuts there; a backend may already have)."""
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text


_CLASS: Any = None


def _lm_class() -> Any:
    """`RungLM`, an `lm_eval.api.model.LM` subclass (built once, when lm-eval is imported)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from lm_eval.api.model import LM

    class RungLM(LM):
        """The harness's `LM` API over a rung `Scorer`."""

        def __init__(self, scorer: Any) -> None:
            super().__init__()
            self.scorer = scorer

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            results = self.scorer.loglikelihood([tuple(r.args) for r in requests])
            for request, result in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood", tuple(request.args), result)
            return [(float(ll), bool(greedy)) for ll, greedy in results]

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            results = self.scorer.loglikelihood_rolling([r.args[0] for r in requests])
            for request, (ll, _) in zip(requests, results):
                self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), ll)
            return [float(ll) for ll, _ in results]

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            asked = [generation_request(r.args[0], r.args[1]) for r in requests]
            texts = self.scorer.generate_until(asked)
            out = [cut_at_stops(text, request.stop) for text, request in zip(texts, asked)]
            for request, text in zip(requests, out):
                self.cache_hook.add_partial("generate_until", tuple(request.args[:1]) + (str(request.args[1]),), text)
            return out

    _CLASS = RungLM
    return RungLM


def harness_lm(scorer: Any) -> Any:
    """An `lm_eval.api.model.LM` answering through `scorer` (`rung_eval.scoring.Scorer`)."""
    _lm_eval()
    return _lm_class()(scorer)


def _task_manager(TaskManager: Any, tasks: Sequence[str], include_path: str | None) -> Any:
    """The tasks of `include_path` alone when they are all there (indexing the harness's
    thousands of built-in task files takes tens of seconds), else those and the built-in ones."""
    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(local.match_tasks([t]) for t in tasks):
            return local
    return TaskManager(include_path=include_path)


def run_harness(backend: Any, tasks: Sequence[str], include_path: str | None = None, limit: int | None = None,
                num_fewshot: int | None = None, batch_size: int = 8) -> dict:
    """The harness's `simple_evaluate` of `tasks` on `backend` (tasks found in `include_path`
    too); its results dict (`results`, `versions`, `configs`, ...)."""
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    from rung_eval.scoring import scorer_for

    if not tasks:
        raise RungError("rung eval --harness: name at least one task")
    manager = _task_manager(TaskManager, tasks, include_path)
    missing = [t for t in tasks if not manager.match_tasks([t])]
    if missing:
        where = f" (nor in {include_path})" if include_path else ""
        raise RungError(f"lm-evaluation-harness has no task {', '.join(map(repr, missing))}{where}")
    lm = harness_lm(scorer_for(backend, batch_size=batch_size))
    results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      num_fewshot=num_fewshot, batch_size=batch_size, log_samples=False)
    if results is None:  # a process other than the first of a distributed run
        return {}
    return dict(results)
