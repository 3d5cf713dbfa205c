#!/usr/bin/env bash
# llama.cpp itself runs rung's GGUF export: not in the default test run (building llama.cpp from
# source takes minutes). It
#   1. installs llama-cpp-python 0.3.36 into .venv with scripts/ensure-llamacpp.sh (built from the
#      registry's source distribution for this CPU, GGML_NATIVE=ON, once: its wheel cache is per CPU),
#   2. trains a small rung-torch model a little on tinyshakespeare.txt and saves it,
#   3. exports it with `rung export MODEL model.gguf --format gguf outtype=f32`,
#   4. compares, on 20 prompts, rung-torch's greedy tokens (and rung's tokenizer) with
#      llama.cpp's (llama_cpp.Llama, n_threads=1, temperature 0), and prints one summary line.
#
#   bash scripts/check-llamacpp.sh [WORK_DIR]      # exit 0 when all 20 prompts agree
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
[ -x .venv/bin/rung ] || bash scripts/ensure-venv.sh
work="${1:-$(mktemp -d -t rung-llamacpp-XXXXXX)}"
mkdir -p "$work"
bash scripts/ensure-llamacpp.sh  # llama-cpp-python built for this CPU, once (a wheel cache per CPU)
.venv/bin/python -c 'import llama_cpp' 2>/dev/null || { echo "llama-cpp-python is not installed: see above" >&2; exit 1; }

export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/python - "$work" "$root/../shared/data/tinyshakespeare.txt" <<'EOF'
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

import rung

work, corpus_file = Path(sys.argv[1]), Path(sys.argv[2])
text = corpus_file.read_text(encoding="utf-8")
held_out = text[-20_000:]
train_text = text[:-20_000]
started = time.time()

# -- a small rung-torch model, trained a little (next-token loss on random windows)
tokenizer = rung.tokenizer("bpe", vocab_size=512)
tokenizer.train([train_text[i:i + 2000] for i in range(0, len(train_text), 2000)])
backend = rung.backend("torch", tokenizer=tokenizer, model="test", device="cpu", precision="fp32",
                       architecture={"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 128})
model = backend.model
ids = torch.tensor(tokenizer.encode(train_text[:300_000]))
generator = torch.Generator().manual_seed(0)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
torch.set_num_threads(1)
model.train()
for step in range(300):
    starts = torch.randint(0, len(ids) - 65, (16,), generator=generator)
    batch = torch.stack([ids[s:s + 65] for s in starts])
    logits = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
model.eval()
model_dir = work / "model"
backend.save(model_dir)
train_seconds = time.time() - started

# -- the GGUF file, through the CLI as a user makes it
gguf_file = work / "model-f32.gguf"
rung_cli = str(Path(sys.executable).with_name("rung"))
subprocess.run([rung_cli, "export", str(model_dir), str(gguf_file), "--format", "gguf", "outtype=f32"], check=True)

# -- 20 prompts from held-out text: rung-torch's greedy tokens against llama.cpp's
from llama_cpp import Llama  # noqa: E402

lines = [line.strip() for line in held_out.splitlines() if len(line.strip()) > 12]
prompts = [line[:40] for line in lines[::max(1, len(lines) // 20)]][:20]
new_tokens = 24
llm = Llama(model_path=str(gguf_file), n_ctx=128, n_threads=1, n_threads_batch=1, seed=0, verbose=False,
            logits_all=False)


def rung_greedy(prompt_ids):
    out = list(prompt_ids)
    with torch.no_grad():
        for _ in range(new_tokens):
            out.append(int(model(torch.tensor([out]))[0, -1].argmax()))
    return out[len(prompt_ids):]


def llama_greedy(prompt_ids):
    llm.reset()
    out = []
    for token in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        out.append(int(token))
        if len(out) == new_tokens:
            break
    return out


same_prompt_tokens = same_greedy = 0
rows = []
for prompt in prompts:
    ours = list(tokenizer.encode(prompt))
    theirs = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    same_prompt_tokens += ours == theirs
    a, b = rung_greedy(ours), llama_greedy(ours)
    same_greedy += a == b
    rows.append({"prompt": prompt, "rung": a, "llama_cpp": b, "same": a == b,
                 "rung_text": tokenizer.decode(a), "llama_cpp_text": llm.detokenize(b).decode("utf-8", "replace")})
llm.close()  # now, not in a finalizer at interpreter exit (llama-cpp-python's raises there)
(work / "llamacpp-check.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")
for row in rows:
    if not row["same"]:
        print(f"differs: {row['prompt']!r}: rung {row['rung_text']!r} / llama.cpp {row['llama_cpp_text']!r}")
import llama_cpp  # noqa: E402

cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")), platform.processor())
print(f"llama.cpp check: {same_greedy}/{len(prompts)} prompts give the same {new_tokens} greedy tokens as "
      f"rung-torch ({same_prompt_tokens}/{len(prompts)} prompts tokenized identically); model {model.num_params()} "
      f"parameters trained 300 steps ({train_seconds:.0f} s), GGUF f32, llama-cpp-python {llama_cpp.__version__}, "
      f"n_threads=1, CPU {cpu}; details in {work / 'llamacpp-check.json'}")
sys.exit(0 if same_greedy == len(prompts) and same_prompt_tokens == len(prompts) else 1)
EOF
