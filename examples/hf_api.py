"""Any Hugging Face transformers model from Python: generate, chat, stream, batch, count tokens.

    python examples/hf_api.py                                  # Qwen/Qwen2.5-0.5B-Instruct (downloads once)
    python examples/hf_api.py -m path/to/local/model           # any folder with config.json + *.safetensors
    python examples/hf_api.py -m HuggingFaceTB/SmolLM2-135M-Instruct -o dtype=bfloat16 -o device=cuda
"""

from __future__ import annotations

import argparse

import yaml

import rung
from rung.records import GenerationRequest, Message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-m", "--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    parser.add_argument("-o", "--option", action="append", default=[], help="backend option KEY=VALUE")
    args = parser.parse_args()
    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.option)}
    llm = rung.backend("hf", model=args.model, **options)
    template = "yes" if llm.tokenizer.chat_template else "no (messages are continued as plain text)"
    print(llm, "| chat template:", template)

    # 1. One question (through the model's chat template), greedy.
    done = rung.ask(llm, "Name three long rivers, one line each.", max_tokens=80, temperature=0)
    print(done.text, f"\n[{done.usage.prompt_tokens}+{done.usage.completion_tokens} tokens, {done.finish_reason}]\n")

    # 2. A conversation, streamed as it decodes; the last delta has finish_reason and usage.
    chat = GenerationRequest(messages=[Message("system", "You answer in one sentence."),
                                       Message("user", "Why is the sky blue?")], max_tokens=80, seed=0)
    for delta in llm.stream(chat):
        print(delta.text, end="", flush=True)
    print(f"\n[{delta.finish_reason}, {delta.usage.completion_tokens} tokens]\n")

    # 3. A raw prompt (no chat template) with a stop string.
    done = llm.generate(GenerationRequest(prompt="1, 2, 3, 4,", max_tokens=40, temperature=0, stop=["8"]))
    print(repr(done.text), done.finish_reason, "\n")

    # 4. Many prompts, decoded together in left-padded batches; results in order.
    questions = [f"What is {a} + {b}? Answer with the number only." for a, b in ((2, 3), (10, 32), (7, 8))]
    for q, c in zip(questions, llm.generate_batch([GenerationRequest(messages=[Message("user", q)],
                                                                     max_tokens=8, temperature=0)
                                                   for q in questions])):
        print(q, "->", c.text.strip())
    print("\ntokens in this sentence:", llm.count_tokens("tokens in this sentence"))


if __name__ == "__main__":
    main()
