"""Preference pairs from JSONL files and Hugging Face datasets (`rung.records.PreferencePair`).

A record holds a prompt and two answers, in any of the forms common preference datasets use:

- strings: {"prompt": "2+3=", "chosen": "5", "rejected": "6"};
- a prompt as a list of turns: {"prompt": [{"role": "user", "content": ...}, ...], ...};
- whole conversations: {"chosen": [user, assistant, ..., assistant], "rejected": [...]}: the
  turns both share before their last are the prompt, the last assistant turns the answers
  (with a "prompt" field too, as UltraFeedback has it, the conversations may repeat it or not).

A malformed record is one `ConfigError` line naming file:line (or dataset[split][index]) and
what is wrong.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping
from typing import Any

from rung.errors import ConfigError
from rung.records import Message, PreferencePair

from rung_lora.data import ROLE_ALIASES, ROLES, dataset_records, jsonl_records
from rung_rlhf.preference_options import PreferenceFieldOptions, PreferenceHFOptions, PreferenceJsonlOptions


def _turns(raw: Any, field: str, opts: PreferenceFieldOptions, where: str) -> list[Message]:
    """A list of {role, content} turns as Messages."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: '{field}' must be a string or a non-empty list of turns")
    aliases = {**ROLE_ALIASES, **opts.roles}
    turns = []
    for index, turn in enumerate(raw):
        here = f"{where}: {field}[{index}]"
        if not isinstance(turn, Mapping):
            raise ConfigError(f"{here}: expected an object with '{opts.role_field}' and '{opts.content_field}'")
        role, content = turn.get(opts.role_field), turn.get(opts.content_field)
        role = aliases.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise ConfigError(f"{here}: role {role!r} is not one of {', '.join(ROLES)} "
                              f"(map it with roles: {{{role}: user}})")
        if not isinstance(content, str):
            raise ConfigError(f"{here}: '{opts.content_field}' must be a string")
        turns.append(Message(role, content))
    return turns


def _answer(raw: Any, field: str, opts: PreferenceFieldOptions, where: str) -> tuple[list[Message], str]:
    """(the turns before the answer, the answer) of a chosen/rejected field."""
    if isinstance(raw, str):
        return [], raw
    turns = _turns(raw, field, opts, where)
    if turns[-1].role != "assistant":
        raise ConfigError(f"{where}: '{field}' must end with an assistant turn (the answer), "
                          f"it ends with a {turns[-1].role} turn")
    return turns[:-1], turns[-1].content


def record_to_pair(record: Any, opts: PreferenceFieldOptions, where: str) -> PreferencePair:
    """One record as a PreferencePair; a ConfigError naming `where` if it is malformed."""
    if not isinstance(record, Mapping):
        raise ConfigError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in (opts.chosen_field, opts.rejected_field) if f not in record]
    if missing:
        found = ", ".join(map(str, record)) or "none"
        raise ConfigError(f"{where}: no '{missing[0]}' field (a preference pair needs '{opts.chosen_field}' and "
                          f"'{opts.rejected_field}'); fields found: {found}")
    chosen_lead, chosen = _answer(record[opts.chosen_field], opts.chosen_field, opts, where)
    rejected_lead, rejected = _answer(record[opts.rejected_field], opts.rejected_field, opts, where)
    if chosen_lead != rejected_lead:
        raise ConfigError(f"{where}: the '{opts.chosen_field}' and '{opts.rejected_field}' conversations differ "
                          "before their last turn (only the last assistant turn may differ)")
    raw_prompt = record.get(opts.prompt_field)
    if raw_prompt is None:
        stated: list[Message] = []
    elif isinstance(raw_prompt, str):
        stated = [Message("user", raw_prompt)]
    else:
        stated = _turns(raw_prompt, opts.prompt_field, opts, where)
    # A conversation that repeats the prompt (UltraFeedback) or continues it (TRL's explicit prompt).
    prompt = chosen_lead if chosen_lead[: len(stated)] == stated else stated + chosen_lead
    if not prompt:
        raise ConfigError(f"{where}: no prompt: give '{opts.prompt_field}' or conversations in "
                          f"'{opts.chosen_field}' and '{opts.rejected_field}'")
    system = record.get(opts.system_field)
    if system is not None:
        if not isinstance(system, str):
            raise ConfigError(f"{where}: '{opts.system_field}' must be a string")
        if not any(m.role == "system" for m in prompt):
            prompt = [Message("system", system), *prompt]
    margin = record.get(opts.margin_field, 0.0)
    if margin is None:
        margin = 0.0
    if isinstance(margin, bool) or not isinstance(margin, numbers.Real):
        raise ConfigError(f"{where}: '{opts.margin_field}' must be a number, got {margin!r}")
    return PreferencePair(tuple(prompt), chosen, rejected, float(margin))


class PreferenceJsonl:
    """Preference pairs, one JSON object per line, from one or more files."""

    def __init__(self, options: PreferenceJsonlOptions) -> None:
        self.options = options

    def read(self) -> Iterator[PreferencePair]:
        for record, where in jsonl_records(self.options.path, self.options.limit):
            yield record_to_pair(record, self.options, where)


class PreferenceHF:
    """Preference pairs from a `datasets` dataset: a builder with data_files, or a saved directory."""

    def __init__(self, options: PreferenceHFOptions) -> None:
        self.options = options

    def read(self) -> Iterator[PreferencePair]:
        for record, where in dataset_records(self.options, "preference_hf", "rung-rlhf[datasets]"):
            yield record_to_pair(record, self.options, where)
