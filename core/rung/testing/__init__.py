"""Test suites a plugin runs on itself (pytest; imported only by tests, never by rung itself).

`BackendContract` and `BackendCase`: the backend contract (see `rung.testing.backend_contract`);
CONTRIBUTING.md shows a third-party backend running it.
"""

from rung.testing.backend_contract import BackendCase, BackendContract

__all__ = ["BackendCase", "BackendContract"]
