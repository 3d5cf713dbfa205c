"""Prompts for the online trainers (grpo, ppo), with optional reference answers.

A record is one JSON object (a JSONL line, or a row of a `datasets` dataset):
{"prompt": "12+34=", "reference": "46"}, or a conversation so far as the prompt:
{"prompt": [{"role": "system", "content": ...}, {"role": "user", "content": ...}], ...}.
A number as the reference is read as its text ("46"). A malformed record is one ConfigError
line naming the file and line (or dataset row) and what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from rung.errors import ConfigError
from rung.records import Message, RewardedPrompt

from rung_lora.data import ROLE_ALIASES, ROLES, dataset_records, jsonl_records
from rung_rlhf.online_options import PromptFieldOptions, PromptsHFOptions, PromptsJsonlOptions


def _turns(raw: Any, field: str, where: str) -> list[Message]:
    if isinstance(raw, str):
        if not raw:
            raise ConfigError(f"{where}: '{field}' is an empty string")
        return [Message("user", raw)]
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: '{field}' must be a string or a non-empty list of {{role, content}} turns")
    turns = []
    for index, turn in enumerate(raw):
        here = f"{where}: {field}[{index}]"
        if not isinstance(turn, Mapping):
            raise ConfigError(f"{here}: expected an object with 'role' and 'content'")
        role, content = turn.get("role"), turn.get("content")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise ConfigError(f"{here}: role {role!r} is not one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise ConfigError(f"{here}: 'content' must be a string")
        turns.append(Message(role, content))
    if turns[-1].role == "assistant":
        raise ConfigError(f"{where}: '{field}' ends with an assistant turn; a prompt ends where the answer starts")
    return turns


def record_to_prompt(record: Any, opts: PromptFieldOptions, where: str) -> RewardedPrompt:
    """One record as a RewardedPrompt; a ConfigError naming `where` if malformed."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if opts.prompt_field not in record:
        found = ", ".join(map(str, record)) or "none"
        raise ConfigError(f"{where}: no '{opts.prompt_field}' field (fields found: {found}); "
                          f"set data.prompt_field")
    turns = _turns(record[opts.prompt_field], opts.prompt_field, where)
    system = record.get(opts.system_field)
    if system is not None:
        if not isinstance(system, str):
            raise ConfigError(f"{where}: '{opts.system_field}' must be a string")
        if system and not any(t.role == "system" for t in turns):
            turns.insert(0, Message("system", system))
    reference = record.get(opts.reference_field)
    if isinstance(reference, bool) or not (reference is None or isinstance(reference, (str, int, float))):
        raise ConfigError(f"{where}: '{opts.reference_field}' must be a string or a number, "
                          f"got {type(reference).__name__}")
    return RewardedPrompt(tuple(turns), None if reference is None else str(reference))


class PromptsJsonl:
    """Prompts, one JSON object per line, from one or more files."""

    def __init__(self, options: PromptsJsonlOptions) -> None:
        self.options = options

    def read(self) -> Iterator[RewardedPrompt]:
        for record, where in jsonl_records(self.options.path, self.options.limit):
            yield record_to_prompt(record, self.options, where)


class PromptsHF:
    """Prompts from a Hugging Face `datasets` dataset (a builder with data_files, or a saved folder)."""

    def __init__(self, options: PromptsHFOptions) -> None:
        self.options = options

    def read(self) -> Iterator[RewardedPrompt]:
        for record, where in dataset_records(self.options, "prompts_hf", "rung-rlhf[datasets]"):
            yield record_to_prompt(record, self.options, where)
