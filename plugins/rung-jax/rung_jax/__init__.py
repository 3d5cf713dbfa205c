"""rung's JAX backend: Llama-style models in Flax NNX, a sharded engine, jitted generation.

Nothing heavy is imported here: `rung_jax.plugin` registers light descriptors, and jax is
imported by the modules that use it (`model`, `engine`, `backend`, ...).
"""

__version__ = "0.1.0"
