"""CPU decoding of one model four ways: rung-torch, rung's llamacpp backend, llama-cpp-python
called directly, and transformers' `generate` — the same weights, the same prompt, batch 1.

A rung BPE tokenizer is trained on a text (tinyshakespeare when it is there, a generated text
otherwise), a rung-torch model of the preset's shape is saved (random weights: speed does not
depend on them), exported to one GGUF file in f32 (`rung export --format gguf`), and each
engine decodes a `--prompt`-token prompt to `--new` greedy tokens on one thread, in
interleaved rounds so all see the same machine load. Printed per engine: new tokens/s (median
of the rounds; all `--new` tokens are timed, the prompt's prefill included, as a user waits for
them), the time to the first token (streamed), and whether its tokens equal rung-torch's.
Ratios are against llama.cpp's completion call (`Llama.create_completion`, what a
llama-cpp-python user calls); its raw `Llama.generate` loop is shown too.

    .venv/bin/python benchmarks/decode_vs_llamacpp.py --preset small --vocab 8192   # ~1 minute
    .venv/bin/python benchmarks/decode_vs_llamacpp.py --preset tiny --vocab 4096

Goals (issue 18), f32: rung-torch >= 0.8x llama.cpp's completion call on `small`, >= 0.6x on
the demo's `tiny`. Without llama-cpp-python (`pip install "rung-llamacpp[llama-cpp]"` or
`bash scripts/ensure-llamacpp.sh`) the llama.cpp rows are skipped with a line saying so.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoke import parse_args

SMOKE = {"preset": "test", "vocab": 300, "new": 4, "prompt": 4, "rounds": 1}
SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def training_text(smoke: bool) -> str:
    if SHAKESPEARE.is_file() and not smoke:
        return SHAKESPEARE.read_text(encoding="utf-8")
    words = ["the", "king", "of", "rome", "said", "to", "his", "men", "and", "all", "were", "glad", "now"]
    return " ".join(words[(i * 7 + i // 5) % len(words)] for i in range(20_000))


class Engine:
    """One way of decoding: `run()` -> (seconds, new ids or text, new tokens), `first()` -> seconds
    to the first token. Engines that give ids are checked id for id against rung-torch's; llama.cpp's
    completion call gives text, which drops the bytes of a broken UTF-8 character, so it is
    checked against rung-torch's ids decoded the same way."""

    def __init__(self, name: str, run, first) -> None:
        self.name, self.run, self.first = name, run, first
        self.times: list[float] = []
        self.firsts: list[float] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", help="rung model preset (the shape; weights are random)")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="new greedy tokens")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (the median is shown)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of every engine")
    parser.add_argument("--no-transformers", action="store_true", help="skip transformers' generate")
    args = parse_args(parser, SMOKE)

    import torch

    torch.set_num_threads(args.threads)
    import rung
    from rung.records import GenerationRequest

    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
        print("llama-cpp-python is not installed: the llama.cpp rows are skipped "
              "(bash scripts/ensure-llamacpp.sh builds it into .venv)")

    work = Path(tempfile.mkdtemp(prefix="rung-decode-bench-"))
    text = training_text(args.smoke)
    tokenizer = rung.tokenizer("bpe", vocab_size=args.vocab)
    tokenizer.train([text[i:i + 2000] for i in range(0, len(text), 2000)])
    context = max(256, args.prompt + args.new + 8)
    torch_backend = rung.backend("torch", tokenizer=tokenizer, model=args.preset, device="cpu", precision="fp32",
                                 architecture={"max_seq_len": context})
    folder = work / "model"
    torch_backend.save(folder)
    torch_backend = rung.backend("torch", model=str(folder), device="cpu", precision="fp32")  # as a user loads it
    n_params = torch_backend.model.num_params()
    prompt_ids = tokenizer.encode(text[len(text) // 3:])[:args.prompt]
    prompt = tokenizer.decode(prompt_ids)
    request = GenerationRequest(prompt=prompt, max_tokens=args.new, temperature=0.0)
    # logprobs=0: each new token comes back with its id (an untimed call, for the check)
    ids_request = GenerationRequest(prompt=prompt, max_tokens=args.new, temperature=0.0, logprobs=0)
    first_request = GenerationRequest(prompt=prompt, max_tokens=args.new, temperature=0.0)

    def rung_runner(backend):
        def run():
            start = time.perf_counter()
            out = backend.generate(request)
            elapsed = time.perf_counter() - start
            return elapsed, [t.id for t in backend.generate(ids_request).logprobs], out.usage.completion_tokens

        def first():
            start = time.perf_counter()
            stream = backend.stream(first_request)
            next(stream)
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed

        return run, first

    engines = [Engine("rung torch backend", *rung_runner(torch_backend))]
    llm = None
    if llama_cpp is not None:
        gguf = work / "model-f32.gguf"
        subprocess.run([str(Path(sys.executable).with_name("rung")), "export", str(folder), str(gguf),
                        "--format", "gguf", "outtype=f32"], check=True, stdout=subprocess.DEVNULL)
        llamacpp_backend = rung.backend("llamacpp", model=str(gguf), threads=args.threads,
                                        context_length=context)
        engines.append(Engine("rung llamacpp backend", *rung_runner(llamacpp_backend)))
        llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=context, n_threads=args.threads,
                              n_threads_batch=args.threads, verbose=False)
        greedy = dict(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0)

        def completion():
            llm.reset()
            start = time.perf_counter()
            out = llm.create_completion(prompt_ids, max_tokens=args.new, **greedy)
            return time.perf_counter() - start, out["choices"][0]["text"], out["usage"]["completion_tokens"]

        def completion_first():
            llm.reset()
            start = time.perf_counter()
            stream = llm.create_completion(prompt_ids, max_tokens=args.new, stream=True, **greedy)
            next(iter(stream))
            elapsed = time.perf_counter() - start
            stream.close()
            return elapsed

        def raw_generate(first_only: bool = False):
            llm.reset()
            out: list[int] = []
            start = time.perf_counter()
            for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
                out.append(int(token))
                if first_only or len(out) == args.new or token == llm.token_eos():
                    break
            elapsed = time.perf_counter() - start
            if first_only:
                return elapsed
            if out and out[-1] == llm.token_eos():
                out.pop()
            return elapsed, out, len(out)

        engines.append(Engine("llama.cpp create_completion", completion, completion_first))
        engines.append(Engine("llama.cpp generate loop", raw_generate, lambda: raw_generate(True)))
    if not args.no_transformers:
        from transformers import LlamaForCausalLM
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        hf = LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        hf_input = torch.tensor([prompt_ids])
        eos = tokenizer.eos_id

        def hf_generate(new: int):
            start = time.perf_counter()
            with torch.inference_mode():
                out = hf.generate(hf_input, attention_mask=torch.ones_like(hf_input), max_new_tokens=new,
                                  do_sample=False, pad_token_id=0, eos_token_id=eos)
            new_ids = [t for t in out[0, len(prompt_ids):].tolist() if t != eos]
            return time.perf_counter() - start, new_ids, len(new_ids)

        engines.append(Engine("transformers generate", lambda: hf_generate(args.new), lambda: hf_generate(1)[0]))

    for engine in engines:  # warm-up: first calls load, compile and fill caches
        engine.run()
        engine.first()
    outputs: dict[str, list[int] | str] = {}
    counts: dict[str, int] = {}
    for _ in range(args.rounds):
        for engine in engines:
            elapsed, outputs[engine.name], counts[engine.name] = engine.run()
            engine.times.append(elapsed)
            engine.firsts.append(engine.first())
    rate = {e.name: counts[e.name] / statistics.median(e.times) for e in engines}
    reference = "llama.cpp create_completion" if llm is not None else None

    print(f"model: preset {args.preset}, vocab {args.vocab}, {n_params / 1e6:.2f}M parameters, f32; batch 1, "
          f"prompt {len(prompt_ids)} tokens, {args.new} new greedy tokens, {args.threads} thread(s), median of "
          f"{args.rounds} interleaved rounds; CPU {cpu_name()}")
    print(f"{'engine':30s} {'new tokens/s':>12s} {'first token':>12s} {'vs llama.cpp':>13s}  same tokens as rung-torch")
    ours = outputs[engines[0].name]

    def same(output: list[int] | str) -> bool:
        if isinstance(output, str):  # text: compared with ours as llama-cpp-python decodes it
            return llm is not None and output == llm.detokenize(ours).decode("utf-8", "ignore")
        return output == ours

    for engine in engines:
        ratio = f"{rate[engine.name] / rate[reference]:12.2f}x" if reference else f"{'-':>13s}"
        print(f"{engine.name:30s} {rate[engine.name]:12.1f} {statistics.median(engine.firsts) * 1e3:10.1f}ms "
              f"{ratio}  {same(outputs[engine.name])}")
    if reference:
        goal = {"small": " (goal >= 0.8x)", "tiny": " (goal >= 0.6x)"}.get(args.preset, "")
        print(f"rung-torch / llama.cpp completion: {rate[engines[0].name] / rate[reference]:.2f}x tokens/s{goal}")
        llm.close()  # now: llama-cpp-python's finalizer fails at interpreter exit
    else:
        print("rung-torch / llama.cpp completion: skipped (no llama-cpp-python)")


if __name__ == "__main__":
    main()
