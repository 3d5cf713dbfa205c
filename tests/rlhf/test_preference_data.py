"""Preference data: every record form read from real JSONL files and a saved `datasets`
dataset, malformed records named by file:line, and the formatted tokens (decoded labels are
exactly the answers with their end of turn)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rung.errors import ConfigError
from rung.objectives import IGNORE_INDEX
from rung.records import Message, PreferencePair
from rung_lora.templates import make_renderer
from rung_rlhf.formatting import Formatter
from rung_rlhf.packing import pack_separate, pack_shared
from rung_rlhf.preference_data import PreferenceHF, PreferenceJsonl
from rung_rlhf.preference_options import PreferenceHFOptions, PreferenceJsonlOptions

from tests.rlhf.conftest import write_jsonl

USER = {"role": "user", "content": "2+3="}
TURNS = [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+1="},
         {"role": "assistant", "content": "2"}, {"role": "user", "content": "2+3="}]

RECORDS = [
    # strings, with a margin and a system prompt
    {"prompt": "2+3=", "chosen": "5", "rejected": "6", "margin": 2, "system": "Add."},
    # a prompt as a list of turns
    {"prompt": TURNS, "chosen": "5", "rejected": "4"},
    # whole conversations (Anthropic HH style): the shared turns are the prompt
    {"chosen": TURNS + [{"role": "assistant", "content": "5"}],
     "rejected": TURNS + [{"role": "assistant", "content": "7"}]},
    # UltraFeedback style: a prompt string that the conversations repeat
    {"prompt": "2+3=", "chosen": [USER, {"role": "assistant", "content": "5"}],
     "rejected": [USER, {"role": "assistant", "content": "9"}]},
    # TRL's explicit prompt: conversations holding the answer only
    {"prompt": [USER], "chosen": [{"role": "assistant", "content": "5"}],
     "rejected": [{"role": "assistant", "content": "3"}]},
]

MULTI = (Message("system", "Add."), Message("user", "1+1="), Message("assistant", "2"), Message("user", "2+3="))
EXPECTED = [
    PreferencePair((Message("system", "Add."), Message("user", "2+3=")), "5", "6", 2.0),
    PreferencePair(MULTI, "5", "4"),
    PreferencePair(MULTI, "5", "7"),
    PreferencePair((Message("user", "2+3="),), "5", "9"),
    PreferencePair((Message("user", "2+3="),), "5", "3"),
]


def test_jsonl_reads_every_form(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", RECORDS)
    assert list(PreferenceJsonl(PreferenceJsonlOptions(path=str(path))).read()) == EXPECTED
    assert len(list(PreferenceJsonl(PreferenceJsonlOptions(path=str(path), limit=2)).read())) == 2


def test_sharegpt_fields_and_roles(tmp_path):
    record = {"conv_a": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
              "conv_b": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "go away"}]}
    path = write_jsonl(tmp_path / "sharegpt.jsonl", [record])
    options = PreferenceJsonlOptions(path=str(path), chosen_field="conv_a", rejected_field="conv_b",
                                     role_field="from", content_field="value")
    assert list(PreferenceJsonl(options).read()) == [PreferencePair((Message("user", "hi"),), "hello", "go away")]


def test_a_saved_datasets_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    # Conversations and strings cannot share an arrow column: one dataset of each.
    conversations = datasets.Dataset.from_list([RECORDS[2]])
    strings = datasets.Dataset.from_list([{k: v for k, v in RECORDS[0].items()}])
    datasets.DatasetDict({"train": conversations, "test": strings}).save_to_disk(str(tmp_path / "ds"))
    read = lambda split: list(PreferenceHF(PreferenceHFOptions(dataset=str(tmp_path / "ds"), split=split)).read())  # noqa: E731
    assert read("train") == [EXPECTED[2]]
    assert read("test") == [EXPECTED[0]]
    with pytest.raises(ConfigError, match="has splits train, test"):
        read("validation")
    # A builder with data files, as load_dataset takes them.
    path = write_jsonl(tmp_path / "p.jsonl", [RECORDS[0], RECORDS[0]])
    json_source = PreferenceHF(PreferenceHFOptions(dataset="json", data_files=str(path)))
    assert list(json_source.read()) == [EXPECTED[0]] * 2


@pytest.mark.parametrize("bad,says", [
    ('{"prompt": "a", "chosen": "b"', "not valid JSON"),
    ('{"question": "a", "answer": "b"}', "no 'chosen' field"),
    ('{"prompt": "a", "chosen": "b", "rejected": 3}', "'rejected' must be a string or a non-empty list"),
    ('{"chosen": [{"role": "user", "content": "a"}], "rejected": "b"}', "must end with an assistant turn"),
    (json.dumps({"chosen": [USER, {"role": "assistant", "content": "5"}],
                 "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "5"}]}),
     "differ before their last turn"),
    ('{"chosen": "b", "rejected": "c"}', "no prompt"),
    ('{"prompt": [{"role": "narrator", "content": "a"}], "chosen": "b", "rejected": "c"}', "role 'narrator'"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c", "margin": "big"}', "'margin' must be a number"),
])
def test_a_malformed_record_is_one_line_naming_file_and_line(tmp_path, bad, says):
    good = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join([good, "", good, bad, good]) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        list(PreferenceJsonl(PreferenceJsonlOptions(path=str(path))).read())
    message = str(err.value)
    assert message.startswith(f"{path}:4:") and says in message and "\n" not in message


def test_a_missing_file_is_a_config_error(tmp_path):
    """Refused when the config is validated (before any work), naming the option."""
    from rung.plugins import get_plugins
    from rung.runner import validate_section

    with pytest.raises(ConfigError, match=r"^data\.path: .*no file matches"):
        validate_section(get_plugins().registry, "data_source",
                         {"name": "preference_jsonl", "path": str(tmp_path / "*.jsonl")}, "data")


def label_texts(tokenizer, packed) -> list[list[str]]:
    """Per row, each completion's labelled tokens decoded (segments 1, 2, ...)."""
    out = []
    for labels, segments in zip(packed.labels, packed.segment_ids):
        kept = labels != IGNORE_INDEX
        out.append([tokenizer.decode(labels[kept & (segments == k)].tolist())
                    for k in range(1, int(segments.max()) + 1)])
    return out


@pytest.mark.parametrize("template,end", [
    ("tokenizer", "<|end|>\n"),
    ("chatml", "<|im_end|>\n"),
    ("plain", "<|endoftext|>\n"),
])
@pytest.mark.parametrize("which", ["rung", "transformers"])
def test_labels_are_exactly_the_answers_and_their_end_of_turn(template, end, which, byte_tok, hf_tok):
    tokenizer = byte_tok if which == "rung" else hf_tok
    formatter = Formatter(make_renderer(template, tokenizer), tokenizer)
    pairs = [formatter.pair(p) for p in EXPECTED]
    lead = " " if template == "plain" else ""  # "Assistant: 5": the space belongs to the answer
    pad = tokenizer.pad_id
    shared = pack_shared([p.prompt for p in pairs], [[p.chosen, p.rejected] for p in pairs], 256, pad)
    want = [[f"{lead}{p.chosen}{end}", f"{lead}{p.rejected}{end}"] for p in EXPECTED]
    assert label_texts(tokenizer, shared) == want
    separate = pack_separate([p.prompt for p in pairs], [[p.chosen, p.rejected] for p in pairs], 200, pad)
    assert [t[0] for t in label_texts(tokenizer, separate)] == [a for row in want for a in row]
    for row, (pair, tokens) in enumerate(zip(EXPECTED, pairs)):
        # The prompt is the conversation rendered up to the answer, tokenized as generation sees it ...
        prompt_text = formatter.renderer(list(pair.prompt), add_generation_prompt=True)
        assert tokens.prompt == tokenizer.encode(prompt_text) == formatter.prompt_ids(pair.prompt)
        # ... and prompt + chosen is the whole rendered conversation, nothing lost or added.
        whole = formatter.renderer([*pair.prompt, Message("assistant", pair.chosen)])
        assert tokenizer.decode(separate.input_ids[2 * row][separate.segment_ids[2 * row] >= 0].tolist()) == whole
        # Nothing of the prompt carries a label.
        assert np.all(shared.labels[row][shared.segment_ids[row] == 0] == IGNORE_INDEX)


def test_system_prompt_option_and_truncation(byte_tok):
    renderer = make_renderer("chatml", byte_tok)
    pair = PreferencePair((Message("user", "a long question " * 4),), "x" * 30, "y")
    formatter = Formatter(renderer, byte_tok, system_prompt="Be brief.", max_prompt_length=40,
                          max_completion_length=16)
    full = Formatter(renderer, byte_tok, system_prompt="Be brief.").pair(pair)
    assert byte_tok.decode(full.prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    cut = formatter.pair(pair)
    assert cut.prompt == full.prompt[-40:]  # the start goes: the question stays next to the answer
    assert cut.chosen == full.chosen[:16] and cut.rejected == full.rejected  # the end goes
    assert cut.truncated == 2
    assert byte_tok.decode(cut.prompt).endswith("<|im_start|>assistant\n")
