"""rung-tokenizers: byte and bpe round trips, training, saving for transformers, chat template."""

from __future__ import annotations

import json

import pytest

import rung
from rung.errors import RungError
from rung.interfaces import Tokenizer, TrainableTokenizer
from rung.records import Message
from rung_tokenizers import load_tokenizer

SAMPLES = [
    "Hello, world!",
    "plain ASCII with  double  spaces\tand tabs\n\nand newlines\r\n",
    "Unicode: héllo wörld, Ελληνικά, 日本語のテキスト, עברית",
    "emoji: 🤖🚀 family 👨‍👩‍👧 flags 🇫🇷",
    "def f(x):\n    if x > 0:\n        return {'a': [1, 2]}\n    return None  # comment\n",
    "",
    "\x00\x01 control \x7f and a lone combining mark \u0301",
]

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nimport sys\n\nprint(os.path.join('a', 'b'))\n",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Les élèves étudient le français et l'histoire. 😀",
] * 40


@pytest.fixture(scope="module")
def bpe():
    tok = rung.tokenizer("bpe", vocab_size=500)
    tok.train(iter(CORPUS))
    return tok


def test_byte_tokenizer_round_trips_and_ids_are_bytes():
    tok = rung.tokenizer("byte")
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 256 + 7
    assert tok.encode("Aé") == [65, 0xC3, 0xA9]
    for text in SAMPLES:
        assert tok.decode(tok.encode(text)) == text
    assert tok.eos_id == tok.bos_id == 256 and tok.pad_id == 257
    assert tok.special_tokens["<|end|>"] == 262
    assert tok.encode("<|endoftext|>") == [256]


def test_bpe_trains_compresses_and_round_trips(bpe):
    assert isinstance(bpe, TrainableTokenizer)
    assert 300 < bpe.vocab_size <= 500
    assert bpe.special_tokens["<|endoftext|>"] == 0 == bpe.eos_id
    for text in SAMPLES + CORPUS[:5]:
        assert bpe.decode(bpe.encode(text)) == text
    code = CORPUS[1]
    assert len(bpe.encode(code)) < len(code.encode()) / 2  # merges learnt from the corpus
    assert bpe.encode_batch(SAMPLES[:3]) == [bpe.encode(t) for t in SAMPLES[:3]]


def test_untrained_bpe_says_so():
    with pytest.raises(RungError, match="no vocabulary yet"):
        rung.tokenizer("bpe").encode("x")


MESSAGES = [Message("system", "Be brief."), Message("user", "hi"), Message("assistant", "hello"),
            Message("user", "bye")]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_saved_tokenizer_loads_in_transformers_with_same_ids_and_no_chat_template(kind, bpe, tmp_path):
    from transformers import AutoTokenizer

    tok = bpe if kind == "bpe" else rung.tokenizer("byte")
    assert tok.chat_template is None  # learnt from text (or bytes): it knows no conversations
    with pytest.raises(RungError, match="has no chat template"):
        tok.apply_chat_template(MESSAGES)
    tok.save(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "chat_template" not in config and (tmp_path / "special_tokens_map.json").is_file()
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf.chat_template is None
    for text in SAMPLES:
        assert hf(text)["input_ids"] == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    assert hf.eos_token_id == tok.eos_id and hf.pad_token_id == tok.pad_id
    # rung's loader (what checkpoints use) gives back the same tokenizer
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok) and again.chat_template is None
    assert again.special_tokens == tok.special_tokens and again.eos_id == tok.eos_id
    assert again.fingerprint() == tok.fingerprint()
    assert [again.encode(t) for t in SAMPLES] == [tok.encode(t) for t in SAMPLES]


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_a_given_chat_template_is_saved_and_rendered_as_transformers_renders_it(kind, bpe, tmp_path):
    from transformers import AutoTokenizer

    tok = rung.tokenizer("byte", chat_template="rung") if kind == "byte" else bpe
    if kind == "bpe":  # what a trainer does once it taught the model a chat format
        tok.chat_template = "rung"
    ours = tok.apply_chat_template(MESSAGES)
    assert ours == ("<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\nhello<|end|>\n"
                    "<|user|>\nbye<|end|>\n<|assistant|>\n")
    assert tok.apply_chat_template(MESSAGES[:2], add_generation_prompt=False) == (
        "<|system|>\nBe brief.<|end|>\n<|user|>\nhi<|end|>\n")
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    theirs = hf.apply_chat_template([{"role": m.role, "content": m.content} for m in MESSAGES],
                                    tokenize=False, add_generation_prompt=True)
    assert ours == theirs
    again = load_tokenizer(tmp_path)
    assert again.chat_template == tok.chat_template and again.apply_chat_template(MESSAGES) == ours
    # Loaded through the registry (`path:`), as a checkpoint's tokenizer is.
    registered = rung.tokenizer(kind, path=str(tmp_path))
    assert type(registered) is type(tok) and registered.apply_chat_template(MESSAGES) == ours
    if kind == "bpe":
        tok.chat_template = None


def test_a_jinja_chat_template_with_special_token_variables(tmp_path):
    from transformers import AutoTokenizer

    template = ("{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] }}"
                "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
    tok = rung.tokenizer("byte", chat_template=template)
    tok.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    expected = "SYSTEM: Be brief.\nUSER: hi\nASSISTANT: hello<|endoftext|>\nUSER: bye\nASSISTANT:"
    assert tok.apply_chat_template(MESSAGES) == expected == hf.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in MESSAGES], tokenize=False, add_generation_prompt=True)
    with pytest.raises(rung.ConfigError, match="tokenizer.chat_template: not a valid Jinja template"):
        rung.tokenizer("byte", chat_template="{% for %}")
    with pytest.raises(rung.ConfigError, match="tokenizer.chat_template: unknown template 'chatml'"):
        rung.tokenizer("byte", chat_template="chatml")


def test_a_chat_template_jinja_file_beside_the_tokenizer_is_read(tmp_path):
    """What transformers (and rung's sft trainer) write: chat_template.jinja next to tokenizer.json."""
    rung.tokenizer("byte").save(tmp_path)
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    assert load_tokenizer(tmp_path).apply_chat_template([Message("user", "a")]) == "[a]"


def test_bpe_path_option_loads_existing_tokenizer(bpe, tmp_path):
    bpe.save(tmp_path / "tok")
    loaded = rung.tokenizer("bpe", path=str(tmp_path / "tok" / "tokenizer.json"))
    assert loaded.encode(CORPUS[0]) == bpe.encode(CORPUS[0])
    with pytest.raises(RungError, match="not found"):
        rung.tokenizer("bpe", path=str(tmp_path / "missing"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RungError, match="not a valid tokenizer.json"):
        rung.tokenizer("bpe", path=str(tmp_path / "bad.json"))


def test_custom_special_tokens():
    tok = rung.tokenizer("byte", special_tokens=["<|endoftext|>", "<|pad|>", "<|fim|>"])
    assert tok.vocab_size == 259 and tok.special_tokens["<|fim|>"] == 258
    with pytest.raises(Exception, match="duplicates"):
        rung.tokenizer("byte", special_tokens=["<|a|>", "<|a|>"])
