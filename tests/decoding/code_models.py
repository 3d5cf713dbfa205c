"""A byte-level BPE tokenizer trained on a little Python, for the sampling-option tests.

Its vocabulary has " name", " print", "def" and a lone " " (what "def " ends in), so token
healing has something real to heal.
"""

from __future__ import annotations

from rung.records import GenerationRequest

CODE = [
    "def name(x):\n    return x + 1\n",
    "def print_all(items):\n    for item in items:\n        print(item)\n",
    "def names(values):\n    return [value.name for value in values]\n",
    "import os\nprint(os.name)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
]


def code_tokenizer():
    """A 400-token BPE (rung's) trained on `CODE`."""
    import rung

    tokenizer = rung.tokenizer("bpe", vocab_size=400)
    tokenizer.train(CODE * 20)
    return tokenizer


def check_healed(backend, prompt: str, **fields) -> str:
    """Generate `prompt` healed on `backend`; check that the first token extends the backed-up
    token's text, that the completion continues the prompt's text exactly (nothing repeated)
    and that the stream says the same; return the completion."""
    tokenizer = backend.tokenizer
    ids = tokenizer.encode(prompt)
    request = GenerationRequest(prompt=prompt, raw=True, max_tokens=6, token_healing=True, logprobs=0, **fields)
    done = backend.generate(request)
    generated = [entry.id for entry in done.logprobs]
    assert tokenizer.decode(generated[:1]).startswith(tokenizer.decode(ids[-1:])), (prompt, done.text)
    assert tokenizer.decode(ids[:-1] + generated) == prompt + done.text
    assert done.usage.prompt_tokens == len(ids) - 1
    assert "".join(d.text for d in backend.stream(request)) == done.text
    return done.text


def first_tokens_unhealed(backend, prompts) -> list[bool]:
    """For each prompt, whether the model's own first token (no healing) extends the prompt's
    last token: when some do not, healing changes what is generated."""
    tokenizer = backend.tokenizer
    out = []
    for prompt in prompts:
        done = backend.generate(GenerationRequest(prompt=prompt, raw=True, max_tokens=1, logprobs=0))
        first = tokenizer.decode([done.logprobs[0].id]) if done.logprobs else ""
        out.append(first.startswith(tokenizer.decode(tokenizer.encode(prompt)[-1:])))
    return out
