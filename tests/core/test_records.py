"""The plain values plugins share: requests, messages, completions."""

from dataclasses import FrozenInstanceError

import pytest

from rung.records import GenerationRequest, Message, Usage


def test_request_needs_messages_or_prompt():
    with pytest.raises(ValueError, match="messages or a prompt"):
        GenerationRequest()


def test_chat_puts_system_first_and_wraps_a_bare_prompt():
    request = GenerationRequest(prompt="hi", system="be brief")
    assert request.chat() == [Message("system", "be brief"), Message("user", "hi")]


def test_chat_keeps_an_existing_system_turn():
    turns = [Message("system", "s"), Message("user", "u")]
    assert GenerationRequest(messages=turns, system="other").chat() == turns


def test_lists_become_tuples_so_requests_are_hashable_and_immutable():
    request = GenerationRequest(messages=[Message("user", "u")], stop=["\n"])
    assert isinstance(request.messages, tuple) and request.stop == ("\n",)
    same = GenerationRequest(messages=(Message("user", "u"),), stop=("\n",))
    assert request == same and len({request, same, GenerationRequest(prompt="u")}) == 2
    with pytest.raises(FrozenInstanceError):
        request.max_tokens = 3


def test_usage_total_counts_both_sides():
    assert Usage(3, 4).total_tokens == 7
    assert Usage(completion_tokens=2).total_tokens == 2

