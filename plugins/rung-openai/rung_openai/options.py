"""Options of the `openai` backend (also any OpenAI-compatible server through `base_url`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from rung.hosted import HostedOptions
from rung.options import SecretStr


class OpenAIOptions(HostedOptions):
    """OpenAI chat completions. Sampling options here are defaults; a request's own win.

    The key, base_url, timeout, retry and concurrency options are the hosted base's
    (`rung.hosted.HostedOptions`), with OpenAI's defaults.
    """

    model: str = Field("gpt-4o-mini", description="model name, e.g. gpt-4o-mini")
    api_key: SecretStr | None = Field(None, description="API key; else $OPENAI_API_KEY (api_key_env), else `rung keys "
                                                        "set openai` (key_name)")
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable read when api_key is not set")
    key_name: str | None = Field("openai", description="key store entry read when neither api_key nor the environment "
                                                       "has a key")
    base_url: str | None = Field(None, description="server URL including /v1, e.g. http://localhost:8000/v1 (vLLM, "
                                                   "llama.cpp, Ollama); default OpenAI's")
    timeout: float = Field(60.0, gt=0, description="seconds to wait for a response (and between streamed chunks) "
                                                   "before a retry")
    organization: str | None = Field(None, description="OpenAI organization id")
    max_tokens: int | None = Field(None, ge=1, description="default cap on generated tokens")
    max_tokens_field: Literal["auto", "max_tokens", "max_completion_tokens"] = Field(
        "auto", description="request field for max tokens: auto = max_completion_tokens for OpenAI, max_tokens for "
                            "other servers")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: list[str] = Field(default_factory=list, description="default stop sequences")
    stream_usage: bool = Field(True, description="ask for token usage at the end of streams "
                                                 "(stream_options.include_usage); turn off for servers that reject it")
    extra_body: dict[str, Any] = Field(default_factory=dict,
                                       description="extra JSON fields sent with every request (e.g. top_k for vLLM)")
    tokenizer: str | None = Field(None, description="folder holding the served model's tokenizer (e.g. the model "
                                                    "folder `rung serve` serves): token-id prompts and scoring "
                                                    "(rung eval's log-likelihood tasks)")
    context_length: int | None = Field(None, ge=2, description="the served model's context in tokens (scoring "
                                                               "windows); default: the tokenizer folder's "
                                                               "config.json")
