"""The plain values every plugin shares: messages, requests, completions, training examples.

Dataclasses, not pydantic models: they are created in hot loops (one per streamed token)
and importing them must cost nothing at start-up.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from rung.errors import RungError

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length", "content_filter", "tool_calls", "error"]


@dataclass(frozen=True)
class ToolCall:
    """A model asking for one tool call: the call's id (the API's, or made up by rung for a
    local model), the tool's name and its arguments as the JSON text the model wrote."""

    id: str
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments as a JSON value (a ValueError when the model wrote no valid JSON)."""
        return json.loads(self.arguments or "{}")


@dataclass(frozen=True, eq=True)
class ToolSpec:
    """A tool a model may call: its name, what it does, and its parameters as a JSON schema
    (an object schema). `rung.tools.tool(function)` builds one from a Python function."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})

    def __hash__(self) -> int:  # the schema is a dict: hash its JSON text, so requests stay hashable
        return hash((self.name, self.description, json.dumps(self.parameters, sort_keys=True, default=str)))


@dataclass(frozen=True)
class Message:
    """One turn of a conversation.

    Tool calls: an assistant turn that asks for tools carries them in `tool_calls` (its
    `content` is any text said beside them, often ""); each result comes back as a ``tool``
    turn whose `content` is the result text, `tool_call_id` the call's id and `name` the tool's.
    """

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))


@dataclass(frozen=True)
class GenerationRequest:
    """What to generate: a chat (`messages`) or a raw `prompt`, and how to sample.

    `None` means "the backend's default" for every sampling option.
    """

    messages: tuple[Message, ...] = ()
    prompt: str | None = None
    system: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    model: str | None = None
    raw: bool = False
    # Log-probabilities (backends whose `capabilities.logprobs` is True): None = none; 0 = each
    # generated token's own; k >= 1 = also the k most likely tokens at each position.
    logprobs: int | None = None
    # Score the prompt too: `Completion.prompt_logprobs` holds every prompt token (the first
    # has logprob None); with max_tokens 0 nothing is generated (lm-evaluation-harness's
    # log-likelihood requests: echo, logprobs, max_tokens 0).
    echo: bool = False
    prompt_ids: tuple[int, ...] | None = None  # the prompt as token ids, used instead of encoding `prompt`
    # Tools the model may call (`rung.tools.run_tools` runs the loop). tool_choice: None (the
    # API's default, "auto" when tools are given), "auto", "none", "required" (some tool), or
    # a tool's name (that one).
    tools: tuple[ToolSpec, ...] = ()
    tool_choice: str | None = None
    # Structured output: decode only JSON that fits this schema (a `rung.decoding.structured.
    # JsonSchema`, a pydantic model class or a JSON-schema dict). Local backends (torch, hf,
    # jax) mask every step's logits by it; others ignore it: call `backend.generate_structured`,
    # which sets it, parses the reply and retries what does not fit.
    constraint: Any = None
    # Sampling that serves code (local backends; rung-openai forwards min_p and
    # repetition_penalty in extra_body, as vLLM and llama.cpp take them). min_p: keep only the
    # tokens at least min_p times as likely as the most likely one (after temperature; 0: off).
    # repetition_penalty: every id already in the prompt or the reply has its logit divided by
    # it when positive, multiplied when negative (CTRL's rule; 1: off; greedy too).
    # token_healing: a plain-text prompt is backed up by its last token and the first token
    # must start with that token's text, so "def " continues as " name", not after a lone space.
    min_p: float | None = None
    repetition_penalty: float | None = None
    token_healing: bool | None = None

    def __post_init__(self) -> None:
        if not self.messages and self.prompt is None:
            raise ValueError("a GenerationRequest needs messages or a prompt")
        check_sampling_values(min_p=self.min_p, repetition_penalty=self.repetition_penalty)
        # Accept lists from callers, store tuples so requests stay hashable and immutable.
        object.__setattr__(self, "messages", tuple(self.messages))
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "tools", tuple(self.tools))

    def chat(self) -> list[Message]:
        """The request as a list of messages (system first, a bare prompt as a user turn)."""
        turns = list(self.messages) if self.messages else [Message("user", self.prompt or "")]
        if self.system and not any(m.role == "system" for m in turns):
            turns.insert(0, Message("system", self.system))
        return turns


class SamplingValueError(RungError, ValueError):
    """A sampling setting out of its range, in one line (a RungError for the CLI, a ValueError
    for callers that check values, as rung serve does: its 400)."""


def check_sampling_values(min_p: float | None = None, repetition_penalty: float | None = None,
                          where: str = "") -> None:
    """min_p in [0, 1] and repetition_penalty above 0 (None: unset), else one line naming `where`."""
    prefix = f"{where}: " if where else ""
    if min_p is not None and (isinstance(min_p, bool) or not 0 <= min_p <= 1):
        raise SamplingValueError(f"{prefix}min_p must be in [0, 1] (0: off), got {min_p!r}")
    if repetition_penalty is not None and (isinstance(repetition_penalty, bool) or not repetition_penalty > 0):
        raise SamplingValueError(f"{prefix}repetition_penalty must be above 0 (1: off), got {repetition_penalty!r}")


@dataclass(frozen=True)
class Usage:
    """Token counts as the backend reported them (never estimated)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TokenLogprob:
    """One token and how likely the model found it where it stands."""

    token: str  # the token's text alone (a piece of a character may show as U+FFFD)
    id: int
    logprob: float | None  # natural log; None for a prompt's first token (nothing predicts it)
    top: tuple[tuple[str, float], ...] = ()  # the request's `logprobs` most likely tokens, best first


@dataclass(frozen=True)
class Completion:
    """A finished generation."""

    text: str
    finish_reason: FinishReason | str
    usage: Usage = field(default_factory=Usage)
    model: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # one per generated token, when asked
    prompt_logprobs: tuple[TokenLogprob, ...] | None = None  # one per prompt token, with `echo`
    tool_calls: tuple[ToolCall, ...] = ()  # the tools the model asks to call (finish_reason "tool_calls")


@dataclass(frozen=True)
class Delta:
    """One piece of a streamed generation; the last one carries finish_reason and usage."""

    text: str = ""
    finish_reason: FinishReason | str | None = None
    usage: Usage | None = None
    model: str | None = None
    logprobs: tuple[TokenLogprob, ...] | None = None  # the tokens whose text this delta carries, when asked


@dataclass(frozen=True)
class Document:
    """Raw text for pretraining, with where it came from."""

    text: str
    id: str = ""
    source: str = ""


@dataclass(frozen=True)
class ChatExample:
    """A conversation to fine-tune on; by default only assistant turns are trained."""

    messages: tuple[Message, ...]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred and a rejected answer (reward models, DPO)."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    margin: float = 0.0  # how much better `chosen` is, when the data says (reward models)


@dataclass(frozen=True)
class RewardedPrompt:
    """A prompt whose answers are scored by a reward function (GRPO, PPO)."""

    prompt: tuple[Message, ...]
    reference: str | None = None


Example = Document | ChatExample | PreferencePair | RewardedPrompt


@dataclass(frozen=True)
class LoraSpec:
    """LoRA adapters a trainer asks a backend to add (`backend.adapters().add_lora(spec)`).

    `target_modules`: "auto" (the attention projections of the architecture), "all-linear",
    or module names. A framework refuses, in one line, what it cannot do (e.g. QLoRA without
    CUDA, DoRA on jax).
    """

    r: int = 16
    alpha: float | None = None  # None: 2 * r
    dropout: float = 0.0
    target_modules: str | tuple[str, ...] = "auto"
    modules_to_save: tuple[str, ...] = ()  # trained in full and saved with the adapter
    dora: bool = False  # weight-decomposed LoRA
    rslora: bool = False  # scale by alpha / sqrt(r) instead of alpha / r
    qlora: bool = False  # 4-bit base weights
    seed: int = 0  # the adapters' initial weights

    @property
    def scale_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.r


@dataclass
class TrainResult:
    """What a training run leaves behind."""

    steps: int
    output_dir: str
    final_loss: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str | None = None
