"""Registration only: light descriptors, nothing heavy imported."""

from __future__ import annotations

from rung.hookspecs import hookimpl


@hookimpl
def rung_register_backends(register):
    register(
        "jax",
        impl="rung_jax.backend:JaxBackend",
        options="rung_jax.options:JaxOptions",
        summary="rung's Llama-style model in JAX/Flax NNX: jitted generation, sharded training",
        framework="jax",
    )


OBJECTIVES = ("next_token_loss", "token_nll_sum", "sequence_logprobs", "token_logprobs", "token_scores",
              "logprobs_and_scores")


@hookimpl
def rung_register_objectives(register):
    for name in OBJECTIVES:
        register(name, impl=f"rung_jax.objectives:{name}", framework="jax",
                 summary=f"{name} for jax models")
    register("sample_tokens", impl="rung_jax.sampling:sample_tokens", framework="jax",
             summary="batched KV-cache sampling of many prompts at once for jax models (online RL)")
