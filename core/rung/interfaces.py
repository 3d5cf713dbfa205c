"""The contract every plugin writes to: Backend, Tokenizer, Trainer, Engine and friends.

Protocols, so a plugin needs no base class; `BaseBackend` is there for the async and batch
methods most backends would otherwise write the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from rung.records import Completion, Delta, Example, GenerationRequest, LoraSpec, Message, TrainResult

if TYPE_CHECKING:
    from rung.context import RunContext
    from rung.training import TrainingOptions


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do; callers check these instead of catching NotImplementedError."""

    chat: bool = True
    streaming: bool = False
    logprobs: bool = False
    trainable: bool = False
    structured_output: bool = False
    tools: bool = False  # passes `GenerationRequest.tools` to the model and returns its `tool_calls`


@runtime_checkable
class Backend(Protocol):
    """Holds one model and answers generation requests."""

    capabilities: Capabilities

    def generate(self, request: GenerationRequest) -> Completion:
        """Generate one completion."""

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        """Generate one completion as deltas; the last delta has finish_reason and usage."""

    async def agenerate(self, request: GenerationRequest) -> Completion:
        """`generate`, for asyncio callers."""

    def astream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """`stream`, for asyncio callers."""

    def generate_batch(
        self, requests: Sequence[GenerationRequest], max_concurrency: int = 8
    ) -> list[Completion]:
        """Generate many completions, in order, with at most `max_concurrency` in flight."""

    def count_tokens(self, text: str) -> int:
        """How many tokens `text` is for this backend's model."""


@runtime_checkable
class TrainableBackend(Backend, Protocol):
    """A compute backend (torch, hf, jax): it owns weights and an engine that trains them."""

    framework: str  # "torch" or "jax": which objectives a trainer must hand its engine

    def engine(self) -> Engine:
        """The training loop for this backend's model."""

    def save(self, directory: str | Path) -> None:
        """Write the weights (safetensors), config.json and tokenizer to `directory`."""

    def frozen_copy(self) -> Any:
        """A copy of the model as it is now, in eval mode, that no engine trains: a reference
        policy for a trainer that trains every weight (with adapters: `Adapters.disabled`)."""


# Beside a saved adapter: which base and backend it was trained on (see `Adapters.save_adapter`).
ADAPTER_NOTE = "rung_adapter.json"


@runtime_checkable
class Adapters(Protocol):
    """LoRA adapters on one compute backend's model, saved in the PEFT format.

    A backend that has them answers `backend.adapters()` (rung-torch and rung-hf through
    peft, rung-jax through Flax NNX); trainers use only these methods, so one `lora` config
    trains on any of them. After `add_lora` the backend's engine trains the adapters alone.
    """

    def add_lora(self, spec: LoraSpec) -> None:
        """Wrap the model's target layers with new adapters (initial weights from `spec.seed`)."""

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the model as it is now."""

    def save_adapter(self, directory: str | Path, **note: Any) -> None:
        """The adapters alone (adapter_model.safetensors, adapter_config.json) and `note` as
        `ADAPTER_NOTE` (JSON: `base`, `backend`, `backend_options`, `chat_template`)."""

    def load_adapter(self, directory: str | Path, merge: bool = True) -> None:
        """Put saved adapters on the model; `merge`: fold them into its weights."""

    def merge_adapter(self) -> None:
        """Fold the adapters into the base weights: the model is a plain model again."""

    def disabled(self, model: Any) -> contextlib.AbstractContextManager[Any]:
        """`model` (the backend's, or the one an engine's evaluation context yields) with its
        adapters switched off inside the block: the frozen base, a preference or RL trainer's
        reference policy without a second model in memory."""


@runtime_checkable
class AdapterBackend(TrainableBackend, Protocol):
    """A compute backend whose model can carry LoRA adapters."""

    def adapters(self) -> Adapters:
        """This backend's adapter operations, bound to its model."""


@runtime_checkable
class ScoreHeads(Protocol):
    """A scalar head on a compute backend's causal model: a reward model reads it at each
    sequence's last token, PPO's value head at every token (objective `token_scores`).

    A backend that has them answers `backend.score_heads()` (rung-torch and rung-hf: an
    `nn.Linear(hidden, 1, bias=False)` named `score`, as transformers' sequence classifiers
    name it; rung-jax: the same in NNX). Loading a folder saved by `save_scorer` gives a model
    that has its head back.
    """

    def add_score_head(self, seed: int = 0) -> None:
        """Give the model a new trainable head (small normal init from `seed`); the engine
        trains it with the rest (and LoRA keeps it trainable: `modules_to_save`)."""

    def has_score_head(self) -> bool:
        """Whether the model has a head now (added, or loaded with the model)."""

    def save_scorer(self, directory: str | Path, pad_token_id: int | None = None) -> None:
        """Model and head as a transformers sequence classifier (config.json architectures
        `...ForSequenceClassification`, `num_labels` 1, `pad_token_id`; safetensors with
        `score.weight`): `AutoModelForSequenceClassification` gives the same scores, read at
        the last token that is not `pad_token_id`."""


@runtime_checkable
class DecodeSlots(Protocol):
    """A compute backend's running decode batch, for continuous batching: requests join and
    leave it between steps, each in its own KV-cache slot.

    A backend that can batch this way answers `backend.decode_slots(max_slots)` (rung-torch:
    `rung_torch.batching`). rung serve's scheduler (`rung_serve.scheduling`) owns the object
    and calls every method from one worker thread of its own, never two at once: it is not
    thread-safe, and it is the only thing that touches the model while requests run. A request
    decodes in a slot exactly as it would alone (a greedy one gives the same tokens whatever
    else runs beside it; a seeded one draws from its own generator).
    """

    max_slots: int

    @property
    def free(self) -> int:
        """Slots that `add` may fill now."""

    @property
    def active(self) -> int:
        """Slots holding a request that has not finished."""

    def accepts(self, request: GenerationRequest) -> bool:
        """Whether `request` can decode in a slot (e.g. not one asking for log-probabilities,
        where a backend has no batched path for them: the caller runs it through `generate`)."""

    def add(self, request: GenerationRequest) -> int:
        """Prefill `request` into a free slot and return the slot's id; a request the backend
        refuses (prompt over the context, bad sampling) raises its RungError, taking no slot."""

    def step(self) -> list[tuple[int, Delta]]:
        """One decoding step of every active slot: (slot, Delta) for each that has text to show
        or finished. A slot's last Delta has finish_reason and usage; its slot is free after."""

    def cancel(self, slot: int) -> None:
        """End the slot's request now and free the slot (a slot already finished: nothing)."""


@runtime_checkable
class RolloutStream(Protocol):
    """A batch stream that samples from the policy being trained (GRPO, PPO): the loop calls
    `next_from(model)` instead of `next(stream)`, with the model of the engine's evaluation
    context (the current weights, eval mode, no gradients), once per micro-batch."""

    def next_from(self, policy: Any) -> Mapping[str, Any]:
        """The next batch, sampled from `policy` where the stream needs new completions."""

    def state_dict(self) -> dict[str, Any]:
        """The position, JSON-serialisable, so a resumed run sees the same data."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go back to a saved position."""


class BaseBackend:
    """Default async and batch methods built on `generate` and `stream`.

    Subclasses implement `generate` (and `stream` where they can); hosted backends override
    the async methods with their SDK's native async client.
    """

    capabilities = Capabilities()

    def generate(self, request: GenerationRequest) -> Completion:
        raise NotImplementedError

    def stream(self, request: GenerationRequest) -> Iterator[Delta]:
        done = self.generate(request)
        yield Delta(done.text, done.finish_reason, done.usage, done.model)

    async def agenerate(self, request: GenerationRequest) -> Completion:
        return await asyncio.to_thread(self.generate, request)

    async def astream(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        # Drive the blocking iterator from a worker thread, one delta at a time.
        iterator = iter(self.stream(request))
        sentinel = object()
        while (delta := await asyncio.to_thread(next, iterator, sentinel)) is not sentinel:
            yield delta  # type: ignore[misc]

    def generate_batch(
        self, requests: Sequence[GenerationRequest], max_concurrency: int = 8
    ) -> list[Completion]:
        with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
            return list(pool.map(self.generate, requests))

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError(f"{type(self).__name__} cannot count tokens")

    def generate_structured(self, request: GenerationRequest, schema: Any) -> Any:
        """An instance of the pydantic model `schema` (a JSON-schema dict: the JSON value).

        The request goes out with `constraint` set, so a local backend decodes only JSON of the
        schema (`rung.decoding.structured`); the reply is parsed and validated, and one that
        does not fit is asked again with another seed (`structured.generate_structured`).
        Hosted backends override this with their API's structured outputs.
        """
        from rung.decoding.structured import generate_structured

        return generate_structured(self, request, schema)

    async def agenerate_structured(self, request: GenerationRequest, schema: Any) -> Any:
        """`generate_structured` for asyncio callers."""
        return await asyncio.to_thread(self.generate_structured, request, schema)


@runtime_checkable
class Tokenizer(Protocol):
    """Turns text into token ids and back."""

    vocab_size: int
    special_tokens: Mapping[str, int]  # e.g. {"<|endoftext|>": 0}
    eos_id: int | None
    bos_id: int | None
    pad_id: int | None

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no special tokens added)."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`."""

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> str:
        """The conversation as one prompt string, in this tokenizer's chat format."""

    def save(self, directory: str | Path) -> None:
        """Write the tokenizer (tokenizer.json and its config) to `directory`."""


@runtime_checkable
class TrainableTokenizer(Tokenizer, Protocol):
    """A tokenizer that learns its vocabulary from a corpus."""

    def train(self, texts: Iterable[str]) -> None:
        """Learn the vocabulary from `texts` (streamed, never held whole)."""


@runtime_checkable
class DataSource(Protocol):
    """Where training examples come from."""

    def read(self) -> Iterator[Example]:
        """The examples, streamed; a file that cannot be parsed is a clear error naming it."""


@runtime_checkable
class BatchStream(Protocol):
    """An endless, deterministic source of batches whose position a checkpoint can save."""

    def __next__(self) -> Mapping[str, Any]:
        """The next batch (framework arrays or numpy)."""

    def state_dict(self) -> dict[str, Any]:
        """The position, JSON-serialisable, so a resumed run sees the same data."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Go back to a saved position."""


# objective(model, batch) -> (loss, metrics): a torch function for the torch engine, a pure
# jax function for the jax engine.
Objective = Callable[[Any, Mapping[str, Any]], tuple[Any, Mapping[str, Any]]]
# evaluate(model) -> metrics, run every `eval_every` steps (validation loss, samples, ...).
Evaluator = Callable[[Any], Mapping[str, float]]


@runtime_checkable
class Engine(Protocol):
    """One framework's side of training: device, precision, the step, checkpoints, evaluation.

    The loop's bookkeeping is the core's (`rung.loop.fit_loop`); an engine supplies the rest.
    """

    framework: str

    def fit(
        self,
        objective: Objective,
        batches: BatchStream,
        options: TrainingOptions,
        run: RunContext,
        evaluate: Evaluator | None = None,
    ) -> TrainResult:
        """Train `options.steps` optimizer steps of `objective`, resuming as options say;
        `evaluate` runs every `eval_every` steps and at the end."""

    def evaluate(self, evaluator: Evaluator) -> Mapping[str, float]:
        """`evaluator(model)` in the evaluation context (eval mode, no gradients, the current
        weights), as `fit` runs it: e.g. an evaluation before training starts."""


@runtime_checkable
class Trainer(Protocol):
    """A learning objective and the shaping of its data."""

    def train(self, run: RunContext) -> TrainResult:
        """Build what the run needs from `run`, hand the objective to the engine, train."""


@runtime_checkable
class MetricSink(Protocol):
    """Where metrics go: the console, a JSONL file, TensorBoard, W&B."""

    def log(self, step: int, metrics: Mapping[str, float | str]) -> None:
        """Record the metrics of one step."""

    def close(self) -> None:
        """Flush and release what the sink holds."""
