"""Instruction data: label masks of real formatted conversations, malformed input, batching."""

from __future__ import annotations

import json

import pytest

import rung
from rung.errors import RungError
from rung.records import ChatExample, Message
from rung_lora.data import (
    IGNORE_INDEX,
    ChatJsonl,
    SFTBatches,
    encode_chat,
    prepare_rows,
    split_examples,
)
from rung_lora.options import ChatJsonlOptions
from rung_lora.templates import make_renderer

CONVERSATION = ChatExample((
    Message("system", "You add numbers."),
    Message("user", "What is 2+3?"),
    Message("assistant", "5"),
    Message("user", "And 10+20?"),
    Message("assistant", "It is 30."),
))


def trained_spans(tokenizer, encoded) -> list[str]:
    """Decode each run of consecutive trained tokens."""
    spans, current = [], []
    for token, keep in zip(encoded.ids, encoded.trained):
        if keep:
            current.append(token)
        elif current:
            spans.append(tokenizer.decode(current))
            current = []
    if current:
        spans.append(tokenizer.decode(current))
    return spans


@pytest.fixture(scope="module")
def byte_tok():
    """rung's byte tokenizer with rung's chat template (a plain one has none)."""
    tokenizer = rung.tokenizer("byte")
    tokenizer.chat_template = "rung"
    return tokenizer


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory, byte_tok):
    """A real transformers tokenizer (with its own Jinja chat template), loaded from disk."""
    from transformers import AutoTokenizer

    from rung.transformers_tokenizer import as_rung_tokenizer

    folder = tmp_path_factory.mktemp("hf_tok")
    byte_tok.save(folder)
    return as_rung_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


@pytest.mark.parametrize("template,end", [
    ("tokenizer", "<|end|>\n"),
    ("chatml", "<|im_end|>\n"),
    ("plain", "<|endoftext|>\n"),
])
@pytest.mark.parametrize("which", ["rung", "transformers"])
def test_only_assistant_turns_are_trained(template, end, which, byte_tok, hf_tok):
    tokenizer = byte_tok if which == "rung" else hf_tok
    renderer = make_renderer(template, tokenizer)
    encoded = encode_chat(CONVERSATION, renderer, tokenizer)
    lead = " " if template == "plain" else ""  # "Assistant: 5": the space belongs to the answer
    assert trained_spans(tokenizer, encoded) == [f"{lead}5{end}", f"{lead}It is 30.{end}"]
    # Nothing lost or added: the tokens are the rendered conversation.
    assert tokenizer.decode(encoded.ids) == renderer(list(CONVERSATION.messages))
    untrained = tokenizer.decode([t for t, k in zip(encoded.ids, encoded.trained) if not k])
    for text in ("You add numbers.", "What is 2+3?", "And 10+20?"):
        assert text in untrained
    # The prompt of the last turn is tokenized as generation will see it.
    prompt = renderer(list(CONVERSATION.messages[:4]), add_generation_prompt=True)
    assert encoded.ids[: len(tokenizer.encode(prompt))] == tokenizer.encode(prompt)


def test_last_turn_only_and_all_tokens(byte_tok):
    renderer = make_renderer("chatml", byte_tok)
    last = encode_chat(CONVERSATION, renderer, byte_tok, train_on="last_assistant")
    assert trained_spans(byte_tok, last) == ["It is 30.<|im_end|>\n"]
    everything = encode_chat(CONVERSATION, renderer, byte_tok, train_on="all")
    assert all(everything.trained)
    labels = last.labels()
    assert labels.count(IGNORE_INDEX) == len(labels) - len(byte_tok.encode("It is 30.<|im_end|>\n"))


def test_system_prompt_option_adds_a_system_turn(byte_tok):
    renderer = make_renderer("chatml", byte_tok)
    example = ChatExample((Message("user", "hi"), Message("assistant", "yo")))
    encoded = encode_chat(example, renderer, byte_tok, system_prompt="Be brief.")
    assert byte_tok.decode(encoded.ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert trained_spans(byte_tok, encoded) == ["yo<|im_end|>\n"]


def write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_formats(tmp_path):
    path = write(tmp_path / "d.jsonl", [
        json.dumps({"messages": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}),
        "",
        json.dumps({"prompt": "p", "completion": "c", "system": "s"}),
    ])
    got = list(ChatJsonl(ChatJsonlOptions(path=str(path), role_field="from", content_field="value")).read())
    assert got[0].messages == (Message("user", "a"), Message("assistant", "b"))
    assert got[1].messages == (Message("system", "s"), Message("user", "p"), Message("assistant", "c"))


@pytest.mark.parametrize("bad,says", [
    ('{"messages": [{"role": "user", "content": "a"}', "not valid JSON"),
    ('{"question": "a", "answer": "b"}', "fields found: question, answer"),
    ('{"messages": [{"role": "narrator", "content": "a"}]}', "role 'narrator'"),
    ('{"messages": [{"role": "user", "content": 3}]}', "'content' must be a string"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant turn"),
])
def test_malformed_line_names_file_and_line(tmp_path, bad, says):
    good = json.dumps({"prompt": "p", "completion": "c"})
    path = write(tmp_path / "train.jsonl", [good, good, bad, good])
    with pytest.raises(RungError) as err:
        list(ChatJsonl(ChatJsonlOptions(path=str(path))).read())
    assert f"{path}:3:" in str(err.value) and says in str(err.value)


def test_truncation_packing_and_split(byte_tok):
    renderer = make_renderer("chatml", byte_tok)
    examples = [ChatExample((Message("user", f"q{i}"), Message("assistant", "a" * (i + 1)))) for i in range(10)]
    train, held = split_examples(examples, 0.2, seed=0)
    assert len(train) == 8 and len(held) == 2 and not set(held) & set(train)
    assert split_examples(examples, 0.2, seed=0) == (train, held)  # deterministic
    # Example i is 64 + i bytes: the three longest exceed 70.
    plain = prepare_rows(examples, renderer, byte_tok, max_length=70)
    assert plain.truncated == 3 and len(plain.rows) == 10 and all(len(ids) <= 70 for ids, _ in plain.rows)
    left = prepare_rows(examples, renderer, byte_tok, max_length=70, truncation="left")
    assert left.rows[-1][0][-1] == byte_tok.encode("\n")[0]  # the end survives
    dropped = prepare_rows(examples, renderer, byte_tok, max_length=70, truncation="drop")
    assert dropped.dropped == 3 and len(dropped.rows) == 7
    packed = prepare_rows(examples, renderer, byte_tok, max_length=200, packing=True)
    assert len(packed.rows) == 5 and all(len(ids) <= 200 for ids, _ in packed.rows)
    assert packed.trained_tokens == prepare_rows(examples, renderer, byte_tok, max_length=200).trained_tokens


def test_batches_are_deterministic_and_resume(byte_tok):
    rows = [([1] * (i % 5 + 2), [IGNORE_INDEX] + [1] * (i % 5 + 1)) for i in range(11)]
    stream = SFTBatches(rows, batch_size=3, seed=1, pad_id=0)
    for _ in range(5):
        next(stream)
    state = stream.state_dict()
    after = [next(stream) for _ in range(4)]
    again = SFTBatches(rows, batch_size=3, seed=1, pad_id=0)
    again.load_state_dict(json.loads(json.dumps(state)))
    for a, b in zip(after, (next(again) for _ in range(4))):
        assert (a["input_ids"] == b["input_ids"]).all() and (a["labels"] == b["labels"]).all()
    batch = after[0]
    assert batch["input_ids"].shape[1] % 8 == 0
    assert ((batch["attention_mask"] == 0) <= (batch["labels"] == IGNORE_INDEX)).all()
    # Two ranks split each global batch between them.
    ranks = [SFTBatches(rows, batch_size=2, seed=1, rank=r, world_size=2) for r in range(2)]
    first = [next(r)["input_ids"].shape[0] for r in ranks]
    assert first == [2, 2]


def test_hugging_face_datasets_source(tmp_path):
    pytest.importorskip("datasets")
    from rung_lora.data import ChatHF
    from rung_lora.options import ChatHFOptions

    path = write(tmp_path / "d.jsonl", [json.dumps({"q": "2+2=", "a": "4"}), json.dumps({"q": "1+1="})])
    options = ChatHFOptions(dataset="json", data_files=str(path), prompt_field="q", completion_field="a")
    reader = ChatHF(options).read()
    assert next(reader).messages == (Message("user", "2+2="), Message("assistant", "4"))
    with pytest.raises(RungError, match=r"json\[train\]\[1\]: needs"):
        next(reader)
