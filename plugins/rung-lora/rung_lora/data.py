"""Instruction data: reading chat examples, formatting them with a chat template, label masks,
truncation, packing, and the deterministic, resumable batch stream the engine pulls from.

Masking is done on the rendered conversation as a growing prefix: for each assistant turn the
text up to the assistant's reply (the prompt, with the generation prompt) is untrained, and
the reply with the template's end-of-turn text is trained. The prompt part is tokenized as a
whole, exactly as it is when the model is later asked to generate from it.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rung.errors import ConfigError, RungError
from rung.jsonl import read_jsonl
from rung.records import ChatExample, Message

from rung_lora.cutting import cut_long_messages
from rung_lora.options import ChatFieldOptions, ChatHFOptions, ChatJsonlOptions
from rung_lora.templates import ChatRenderer, incremental_error

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant",
                "ai": "assistant", "chatgpt": "assistant"}


# ---------------------------------------------------------------- records -> ChatExample


def record_to_example(record: Any, opts: ChatFieldOptions, where: str) -> ChatExample:
    """One JSON record as a ChatExample; a RungError naming `where` (file:line) if malformed."""
    if not isinstance(record, Mapping):
        raise RungError(f"{where}: expected a JSON object, got {type(record).__name__}")
    fmt = opts.format
    if fmt == "auto":
        fmt = "messages" if opts.messages_field in record else "prompt_completion"
    turns: list[Message] = []
    system = record.get(opts.system_field)
    if system is not None and not isinstance(system, str):
        raise RungError(f"{where}: '{opts.system_field}' must be a string")
    if fmt == "messages":
        raw = record.get(opts.messages_field)
        if not isinstance(raw, list) or not raw:
            raise RungError(f"{where}: '{opts.messages_field}' must be a non-empty list of turns")
        aliases = {**ROLE_ALIASES, **opts.roles}
        for index, turn in enumerate(raw):
            here = f"{where}: {opts.messages_field}[{index}]"
            if not isinstance(turn, Mapping):
                raise RungError(f"{here}: expected an object with '{opts.role_field}' and '{opts.content_field}'")
            role, content = turn.get(opts.role_field), turn.get(opts.content_field)
            role = aliases.get(role, role) if isinstance(role, str) else role
            if role not in ROLES:
                raise RungError(f"{here}: role {role!r} is not one of {', '.join(ROLES)} "
                                f"(map it with roles: {{{role}: user}})")
            if not isinstance(content, str):
                raise RungError(f"{here}: '{opts.content_field}' must be a string")
            turns.append(Message(role, content))
        if system and not any(t.role == "system" for t in turns):
            turns.insert(0, Message("system", system))
    else:
        prompt, completion = record.get(opts.prompt_field), record.get(opts.completion_field)
        if not isinstance(prompt, str) or not isinstance(completion, str):
            found = ", ".join(map(str, record)) or "none"
            raise RungError(
                f"{where}: needs '{opts.messages_field}' (a chat) or string fields "
                f"'{opts.prompt_field}' and '{opts.completion_field}'; fields found: {found}"
            )
        if system:
            turns.append(Message("system", system))
        turns += [Message("user", prompt), Message("assistant", completion)]
    if not any(t.role == "assistant" for t in turns):
        raise RungError(f"{where}: the conversation has no assistant turn to train on")
    return ChatExample(tuple(turns))


def _paths(spec: str | list[str]) -> list[Path]:
    found: list[Path] = []
    for item in [spec] if isinstance(spec, str) else spec:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            raise RungError(f"data.path: no file matches '{item}'")
        for match in matches:
            if not Path(match).is_file():
                raise RungError(f"data.path: '{match}' is not a file")
            found.append(Path(match))
    return found


def jsonl_records(spec: str | list[str], limit: int | None = None) -> Iterator[tuple[Any, str]]:
    """Each record of the JSONL files `spec` names (a path, a glob, or a list of them) with
    where it is (`file:line`), at most `limit`; blank lines are skipped, a line that is not
    JSON, not UTF-8 or too long is a ConfigError naming its file and line (`rung.jsonl`), and
    files that hold no record at all are a ConfigError naming them. Every JSONL data source
    reads this way."""
    count = 0
    try:
        paths = _paths(spec)
    except RungError as exc:
        raise ConfigError(str(exc)) from None
    for path in paths:
        for record, where in read_jsonl(path):
            yield record, where
            count += 1
            if limit and count >= limit:
                return
    if not count:
        shown = ", ".join(str(path) for path in paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
        raise ConfigError(f"{shown}: no records (empty, or only blank lines); a data file holds one JSON "
                          "object per line")


def dataset_records(opts: Any, source: str, extra: str) -> Iterator[tuple[Any, str]]:
    """Each record of the `datasets` dataset `opts` names (`dataset`, `split`, `subset`,
    `data_files`, `limit`): a dataset directory (save_to_disk) or a builder / hub id, with
    where it is (`dataset[split][index]`); a split with no rows is a ConfigError naming it.
    `source` and `extra` name the data source and the pip extra that installs `datasets`, for
    the error when it is missing."""
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"data source {source} needs `datasets`: pip install '{extra}'") from None
    path = Path(opts.dataset)
    try:
        if path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json")):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if opts.split not in loaded:
                    raise ConfigError(f"data.split '{opts.split}': the dataset at {path} has splits "
                                      f"{', '.join(loaded)}")
                loaded = loaded[opts.split]
        else:
            loaded = datasets.load_dataset(opts.dataset, opts.subset, data_files=opts.data_files, split=opts.split)
    except (FileNotFoundError, ValueError, OSError, KeyError) as exc:
        raise ConfigError(f"data.dataset '{opts.dataset}': cannot load it ({str(exc).splitlines()[0]})") from None
    index = -1
    for index, record in enumerate(loaded):
        if opts.limit and index >= opts.limit:
            return
        yield record, f"{opts.dataset}[{opts.split}][{index}]"
    if index < 0:
        raise ConfigError(f"data.dataset '{opts.dataset}': split '{opts.split}' has no rows")


class ChatJsonl:
    """Chat examples or prompt/completion pairs from JSONL files."""

    def __init__(self, options: ChatJsonlOptions) -> None:
        self.options = options

    def read(self) -> Iterator[ChatExample]:
        for record, where in jsonl_records(self.options.path, self.options.limit):
            yield record_to_example(record, self.options, where)


class ChatHF:
    """Chat examples or prompt/completion pairs from a Hugging Face `datasets` dataset."""

    def __init__(self, options: ChatHFOptions) -> None:
        self.options = options

    def read(self) -> Iterator[ChatExample]:
        for record, where in dataset_records(self.options, "chat_hf", "rung-lora[datasets]"):
            yield record_to_example(record, self.options, where)


# ---------------------------------------------------------------- formatting and masks


@dataclass
class Encoded:
    """One formatted example: token ids and which of them carry loss."""

    ids: list[int]
    trained: list[bool]

    def labels(self) -> list[int]:
        return [t if keep else IGNORE_INDEX for t, keep in zip(self.ids, self.trained)]


def encode_chat(example: ChatExample, renderer: ChatRenderer, tokenizer: Any,
                train_on: str = "assistant", system_prompt: str | None = None) -> Encoded:
    """Token ids of the rendered conversation and the mask of tokens to train on."""
    messages = list(example.messages)
    if system_prompt and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", system_prompt))
    if train_on == "all":
        ids = tokenizer.encode(renderer(messages, add_generation_prompt=False))
        return Encoded(ids, [True] * len(ids))
    answers = [i for i, m in enumerate(messages) if m.role == "assistant"]
    if not answers:
        raise RungError("a conversation has no assistant turn to train on")
    ids: list[int] = []
    trained: list[bool] = []
    done = ""  # the text whose tokens are already in `ids`

    def add(text: str, train: bool) -> None:
        new = tokenizer.encode(text) if text else []
        ids.extend(new)
        trained.extend([train] * len(new))

    for i in answers:
        prompt = renderer(messages[:i], add_generation_prompt=True)
        full = renderer(messages[: i + 1], add_generation_prompt=False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise incremental_error(renderer)
        # The prompt as a whole, as generation will see it, when that extends what we have.
        whole = tokenizer.encode(prompt)
        if whole[: len(ids)] == ids:
            trained.extend([False] * (len(whole) - len(ids)))
            ids[:] = whole
        else:
            add(prompt[len(done):], False)
        add(full[len(prompt):], train_on == "assistant" or i == answers[-1])
        done = full
    rest = renderer(messages, add_generation_prompt=False)
    if not rest.startswith(done):
        raise incremental_error(renderer)
    add(rest[len(done):], False)
    return Encoded(ids, trained)


def prompt_and_reference(example: ChatExample, system_prompt: str | None = None) -> tuple[list[Message], str]:
    """The conversation up to its last assistant turn, and that turn's text (for eval metrics)."""
    messages = list(example.messages)
    if system_prompt and not any(m.role == "system" for m in messages):
        messages.insert(0, Message("system", system_prompt))
    last = max(i for i, m in enumerate(messages) if m.role == "assistant")
    return messages[:last], messages[last].content


@dataclass
class Prepared:
    """Training rows ready for batching, with counts for the log."""

    rows: list[tuple[list[int], list[int]]]  # (input_ids, labels)
    examples: int
    dropped: int
    truncated: int
    tokens: int
    trained_tokens: int


def prepare_rows(examples: Iterable[ChatExample], renderer: ChatRenderer, tokenizer: Any, *,
                 max_length: int, truncation: str = "right", train_on: str = "assistant",
                 system_prompt: str | None = None, packing: bool = False) -> Prepared:
    """Format, mask and truncate examples (and pack them when asked)."""
    rows: list[tuple[list[int], list[int]]] = []
    dropped = truncated = seen = 0
    for example in examples:
        seen += 1
        example = cut_long_messages(example, tokenizer, max_length, truncation)  # bounded memory (cutting.py)
        enc = encode_chat(example, renderer, tokenizer, train_on, system_prompt)
        ids, labels = enc.ids, enc.labels()
        if len(ids) > max_length:
            if truncation == "drop":
                dropped += 1
                continue
            truncated += 1
            ids, labels = (ids[:max_length], labels[:max_length]) if truncation == "right" else (
                ids[-max_length:], labels[-max_length:])
        # A label on position 0 never counts (nothing predicts it); need one after it.
        if not any(label != IGNORE_INDEX for label in labels[1:]):
            dropped += 1
            continue
        rows.append((ids, labels))
    if packing:
        rows = pack_rows(rows, max_length)
    tokens = sum(len(ids) for ids, _ in rows)
    trained_tokens = sum(sum(1 for x in labels[1:] if x != IGNORE_INDEX) for _, labels in rows)
    return Prepared(rows, seen, dropped, truncated, tokens, trained_tokens)


def pack_rows(rows: Sequence[tuple[list[int], list[int]]], max_length: int) -> list[tuple[list[int], list[int]]]:
    """Whole examples, in order, put together into rows of at most `max_length` tokens."""
    packed: list[tuple[list[int], list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    for row_ids, row_labels in rows:
        if ids and len(ids) + len(row_ids) > max_length:
            packed.append((ids, labels))
            ids, labels = [], []
        ids = ids + row_ids
        labels = labels + [IGNORE_INDEX] + row_labels[1:] if labels else list(row_labels)
    if ids:
        packed.append((ids, labels))
    return packed


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, multiple: int = 8) -> dict[str, np.ndarray]:
    """Right-padded numpy arrays: input_ids, labels (-100 on padding) and attention_mask."""
    longest = max(len(ids) for ids, _ in rows)
    width = int(math.ceil(longest / multiple) * multiple)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (ids, labs) in enumerate(rows):
        input_ids[i, : len(ids)] = ids
        labels[i, : len(labs)] = labs
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


class SFTBatches:
    """Endless shuffled epochs over the rows; each rank takes its share of every global batch.

    The position (epoch, index) is the whole state, so a resumed run sees the same batches.
    """

    def __init__(self, rows: Sequence[tuple[list[int], list[int]]], batch_size: int, *, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, pad_id: int = 0,
                 pad_to_multiple_of: int = 8) -> None:
        if not rows:
            raise RungError("no training examples are left after formatting and truncation")
        self.rows = rows
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.pad_id, self.multiple = pad_id, pad_to_multiple_of
        self.epoch, self.index = 0, 0
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            n = len(self.rows)
            self._order = (np.random.default_rng([self.seed, self.epoch]).permutation(n)
                           if self.shuffle else np.arange(n))
        return self._order

    def _take(self) -> int:
        order = self._epoch_order()
        item = int(order[self.index])
        self.index += 1
        if self.index >= len(order):
            self.epoch, self.index, self._order = self.epoch + 1, 0, None
        return item

    def __iter__(self) -> "SFTBatches":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        global_batch = [self._take() for _ in range(self.batch_size * self.world_size)]
        mine = global_batch[self.rank * self.batch_size: (self.rank + 1) * self.batch_size]
        return collate([self.rows[i] for i in mine], self.pad_id, self.multiple)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "rows": len(self.rows)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("rows", len(self.rows)) != len(self.rows):
            raise RungError(f"the checkpoint's data had {state['rows']} rows, this run's has "
                            f"{len(self.rows)}: resume with the same data and formatting options")
        self.epoch, self.index, self._order = int(state["epoch"]), int(state["index"]), None


def split_examples(examples: list[ChatExample], eval_size: float,
                   seed: int) -> tuple[list[ChatExample], list[ChatExample]]:
    """A deterministic held-out split: a fraction (<1) or a count (>=1) of the examples."""
    if eval_size <= 0 or len(examples) < 2:
        return examples, []
    count = int(eval_size) if eval_size >= 1 else max(1, int(round(len(examples) * eval_size)))
    if count >= len(examples):
        raise ConfigError(f"trainer.eval_size {eval_size}: holds out all {len(examples)} examples")
    order = np.random.default_rng([seed, 7]).permutation(len(examples))
    held = set(order[:count].tolist())
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])
