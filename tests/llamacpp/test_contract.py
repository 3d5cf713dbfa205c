"""The backend contract (`rung.testing`) on `llamacpp` with a bare GGUF file: llama.cpp's own
tokenizer (tests/backends runs it on a model folder, rung's tokenizer)."""

from __future__ import annotations

import pytest

from rung.testing import BackendCase, BackendContract


class TestGGUFFileContract(BackendContract):
    @pytest.fixture(scope="class")
    def backend_case(self, gguf_backend):
        return BackendCase(gguf_backend, prompt="the cat sat on the mat and", max_tokens=16,
                           too_long_prompt="the cat sat on the mat " * 30)
