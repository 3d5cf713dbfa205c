"""Level 1 from Python: prompt a hosted model, stream, batch, and get structured output.

    python examples/prompt_api.py                                 # OpenAI, $OPENAI_API_KEY
    python examples/prompt_api.py -b anthropic -m claude-haiku-4-5
    python examples/prompt_api.py -o base_url=http://localhost:8000/v1 -m my-model
"""

from __future__ import annotations

import argparse

import yaml
from pydantic import BaseModel

import rung
from rung.records import GenerationRequest, Message


class River(BaseModel):
    name: str
    length_km: int
    mouth: str


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-b", "--backend", default="openai")
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("-o", "--option", action="append", default=[], help="backend option KEY=VALUE")
    args = parser.parse_args()
    options = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.option)}
    if args.model:
        options["model"] = args.model
    llm = rung.backend(args.backend, **options)

    # 1. One question.
    done = rung.ask(llm, "Name three long rivers, one line each.", max_tokens=120)
    print(done.text, f"\n[{done.usage.prompt_tokens}+{done.usage.completion_tokens} tokens, {done.finish_reason}]\n")

    # 2. A conversation, streamed; the last delta carries finish_reason and usage.
    chat = GenerationRequest(
        messages=(Message("user", "Which is the longest?"), Message("assistant", "The Nile, by most measures."),
                  Message("user", "Where does it reach the sea?")),
        system="Answer in one sentence.", max_tokens=80,
    )
    for delta in llm.stream(chat):
        print(delta.text, end="", flush=True)
        if delta.finish_reason:
            print(f"\n[{delta.finish_reason}, {delta.usage.completion_tokens if delta.usage else '?'} tokens]\n")

    # 3. Many prompts at once, at most 4 in flight, answers in order.
    questions = [f"In one word: the continent of the {r} river?" for r in ("Amazon", "Danube", "Mekong", "Volga")]
    answers = llm.generate_batch([GenerationRequest(prompt=q, max_tokens=10) for q in questions], max_concurrency=4)
    for q, c in zip(questions, answers):
        print(f"{q} -> {c.text.strip()}")

    # 4. Structured output into a pydantic model (where the API supports it).
    if llm.capabilities.structured_output:
        river = llm.generate_structured(GenerationRequest(prompt="Describe the Danube.", max_tokens=200), River)
        print(f"\n{river!r}")


if __name__ == "__main__":
    main()
