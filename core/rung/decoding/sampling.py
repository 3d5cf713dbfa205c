"""How one request samples: its own settings over the backend's defaults, checked once.

Every local backend builds its `Sampling` here, so a bad setting is the same one-line error
everywhere, and so is a request that does not fit the model's context:

- `max_tokens` below 1 is an error, whoever set it, except 0 with `echo`: the prompt is
  scored and nothing generated (lm-evaluation-harness's log-likelihood requests).
- The prompt plus the new tokens must fit in the context: `prompt_tokens + max_tokens <=
  context`. A request that asks for more `max_tokens` than fit is an error; when the request
  leaves `max_tokens` unset, the backend's default is lowered to what fits (a default must
  not make a short model refuse every prompt), and only a prompt that leaves no room at all
  is an error.
- A request's `constraint` (structured output) is bound to the tokenizer here
  (`rung.decoding.structured.bind`: the schema's token masks); its shortest JSON must fit in
  `max_tokens`. Rows without one carry None and their loops do no extra work.
- `min_p` in [0, 1] (0: off) and `repetition_penalty` above 0 (1: off), the request's over the
  backend's; token healing (`rung.decoding.healing`) is bound by `request_to_prompt`, which
  backs the prompt up: it arrives here as the row's constraint and the text it took back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rung.errors import RungError
from rung.records import GenerationRequest, check_sampling_values


@dataclass(frozen=True)
class Sampling:
    """How one row is decoded; equal Samplings may share a batch."""

    max_tokens: int
    temperature: float = 0.0
    top_k: int | None = None  # None: no top-k
    top_p: float | None = None  # None: no nucleus cut
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_ids: frozenset[int] = field(default_factory=frozenset)
    logprobs: int | None = None  # None: none; 0: each token's own; k: also the k most likely
    echo: bool = False  # the prompt is echoed: with `logprobs`, its tokens are scored too
    # Structured output: a `rung.decoding.structured.TokenConstraint` (the request's schema on
    # this tokenizer); the loop masks each step's logits with a `TokenGuide` from it.
    constraint: Any = None
    min_p: float | None = None  # None: no min-p cut
    repetition_penalty: float = 1.0  # 1: off; applies to greedy rows too
    # Token healing: the prompt's text its backed-up last token held (the constraint, a
    # `rung.decoding.healing.Healing`, makes the first token start with it); the decoder leaves
    # it out of the text, so the completion is what follows the prompt's own text.
    healed: str = ""

    @property
    def penalizes(self) -> bool:
        """Whether the loop must track the ids seen so far (a repetition penalty)."""
        return self.repetition_penalty != 1.0

    @property
    def scores_prompt(self) -> bool:
        """Whether the loop scores the prompt (`Completion.prompt_logprobs`): echo with logprobs."""
        return self.echo and self.logprobs is not None

    @property
    def greedy(self) -> bool:
        return not self.temperature or self.temperature <= 0 or self.top_k == 1


@dataclass(frozen=True)
class Defaults:
    """What a backend uses where a request leaves a setting unset (its options, or the model's
    generation_config.json for a transformers model)."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    token_healing: bool = False


def defaults_of(options: Any) -> Defaults:
    """The `Defaults` of a local backend's options (max_tokens, temperature and, where the
    options have them, top_p, top_k, min_p, repetition_penalty, token_healing)."""
    return Defaults(max_tokens=options.max_tokens, temperature=options.temperature,
                    top_p=getattr(options, "top_p", None), top_k=getattr(options, "top_k", None),
                    min_p=getattr(options, "min_p", None),
                    repetition_penalty=getattr(options, "repetition_penalty", None),
                    token_healing=bool(getattr(options, "token_healing", False)))


def context_error(prompt_tokens: int, max_tokens: int | None, context: int) -> RungError:
    """The one message for a request that does not fit (max_tokens None: the backend's default)."""
    if max_tokens is None:
        return RungError(
            f"the prompt is {prompt_tokens} tokens, which leaves no room for an answer in the model's "
            f"context of {context} tokens; shorten the prompt"
        )
    return RungError(
        f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is {prompt_tokens + max_tokens} "
        f"tokens, more than the model's context of {context}; shorten the prompt or lower max_tokens"
    )


def check_max_tokens(max_tokens: int, echo: bool = False) -> None:
    """max_tokens is at least 1, or 0 with `echo` (score the prompt, generate nothing)."""
    if echo and max_tokens == 0:
        return
    if max_tokens < 1:
        raise RungError(f"max_tokens must be at least 1{' (or 0 with echo)' if echo else ''}, got {max_tokens}")


def fit_max_tokens(requested: int | None, default: int, prompt_tokens: int, context: int | None,
                   echo: bool = False) -> int:
    """The new tokens a row may generate: the request's own `max_tokens` (which must fit), or the
    backend's `default` lowered to the room the context leaves."""
    if requested is not None:
        check_max_tokens(requested, echo)
        if context is not None and prompt_tokens + requested > context:
            raise context_error(prompt_tokens, requested, context)
        return requested
    check_max_tokens(default)
    if context is None:
        return default
    if prompt_tokens >= context:
        raise context_error(prompt_tokens, None, context)
    return min(default, context - prompt_tokens)


def sampling_for(
    request: GenerationRequest,
    defaults: Defaults,
    prompt_tokens: int,
    context: int | None,
    stop: tuple[str, ...] = (),
    stop_ids: frozenset[int] = frozenset(),
    tokenizer: Any = None,
    healing: Any = None,
) -> Sampling:
    """The request's Sampling: its settings over `defaults`, each checked; `stop`/`stop_ids`
    are added to the request's own stop strings (end-of-turn markers, eos); a request's
    `constraint` is bound to `tokenizer`; `healing`: the prompt's token healing
    (`rung.decoding.healing.Healing`, from `request_to_prompt`), the row's constraint."""
    temperature = request.temperature if request.temperature is not None else defaults.temperature
    top_k = request.top_k if request.top_k is not None else defaults.top_k
    top_p = request.top_p if request.top_p is not None else defaults.top_p
    if temperature is not None and temperature < 0:
        raise RungError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 0:
        raise RungError(f"top_k must be at least 1 (or 0: no top-k), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise RungError(f"top_p must be in (0, 1], got {top_p}")
    min_p = request.min_p if request.min_p is not None else defaults.min_p
    penalty = request.repetition_penalty if request.repetition_penalty is not None else defaults.repetition_penalty
    check_sampling_values(min_p=min_p, repetition_penalty=penalty)
    if request.logprobs is not None and request.logprobs < 0:
        raise RungError(f"logprobs must be 0 (each token's own) or more, got {request.logprobs}")
    echo = bool(request.echo)
    max_tokens = fit_max_tokens(request.max_tokens, defaults.max_tokens, prompt_tokens, context, echo)
    constraint = None
    if getattr(request, "constraint", None) is not None:
        if tokenizer is None:
            raise RungError("a constrained request (structured output) needs the backend's tokenizer")
        from rung.decoding.structured import bind

        constraint = bind(request.constraint, tokenizer, max_tokens)
    if healing is not None:
        if constraint is not None:
            raise RungError("token healing and a constraint (structured output) cannot be combined; "
                            "turn token_healing off for this request")
        constraint = healing
    return Sampling(
        max_tokens=max_tokens,
        temperature=float(temperature or 0.0),
        top_k=top_k or None,  # 0: no top-k
        top_p=None if top_p is None or top_p >= 1 else float(top_p),
        seed=request.seed,
        stop=tuple(dict.fromkeys(s for s in (*request.stop, *stop) if s)),
        stop_ids=frozenset(stop_ids),
        logprobs=request.logprobs,
        echo=echo,
        constraint=constraint,
        min_p=float(min_p) if min_p else None,  # 0: off
        repetition_penalty=float(penalty) if penalty is not None else 1.0,
        healed=healing.text if healing is not None else "",
    )
