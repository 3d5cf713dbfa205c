"""A fake LLM API server on 127.0.0.1 for this folder's tests; user config in a temp dir."""

# Never put tests/ itself on sys.path: its folders (torch, jax, openai...) would shadow the
# real packages. The repository root is on the path (pytest's `pythonpath`).
from tests.hosted_fixtures import _isolated, server  # noqa: F401  (fixtures)
