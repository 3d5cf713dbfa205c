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
