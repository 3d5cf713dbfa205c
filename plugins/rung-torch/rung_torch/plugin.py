"""Registration of rung-torch's pieces: light, imports nothing heavy."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register("torch", impl="rung_torch.backend:TorchBackend", options="rung_torch.options:TorchOptions",
             summary="rung's Llama-style model in PyTorch (CUDA or CPU): generate and train",
             framework="torch")


OBJECTIVES = ("next_token_loss", "token_nll_sum", "sequence_logprobs", "token_logprobs", "token_scores",
              "logprobs_and_scores")


@hookimpl
def rung_register_objectives(register):
    for name in OBJECTIVES:
        register(name, impl=f"rung_torch.objectives:{name}", framework="torch",
                 summary=f"{name} for torch models")
    register("sample_tokens", impl="rung_torch.sampling:sample_tokens", framework="torch",
             summary="batched KV-cache sampling of token ids (rung models: rung's decoder; transformers: generate)")
