"""Options of the `anthropic` backend."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rung.hosted import HostedOptions
from rung.options import SecretStr


class AnthropicOptions(HostedOptions):
    """Anthropic Messages API. `max_tokens` is required by the API, so it has a default.

    The SDK (2.x) sends API version 2026-10-21, which accepts no temperature, top_p or top_k;
    set `api_version` to an older version (e.g. 2023-06-01) to send them to models that still
    take them. A request that asks for sampling the API version cannot do is an error.
    The key, base_url, timeout, retry and concurrency options are the hosted base's
    (`rung.hosted.HostedOptions`), with Anthropic's defaults.
    """

    model: str = Field("claude-haiku-4-5", description="model name, e.g. claude-haiku-4-5")
    api_key: SecretStr | None = Field(None, description="API key; else $ANTHROPIC_API_KEY (api_key_env), else `rung "
                                                        "keys set anthropic` (key_name)")
    api_key_env: str | None = Field("ANTHROPIC_API_KEY",
                                    description="environment variable read when api_key is not set")
    key_name: str | None = Field("anthropic", description="key store entry read when neither api_key nor the "
                                                          "environment has a key")
    base_url: str | None = Field(None, description="server URL without /v1; default Anthropic's")
    api_version: str | None = Field(None, description="anthropic-version header; default the SDK's (2026-10-21)")
    max_tokens: int = Field(1024, ge=1, description="default cap on generated tokens")
    temperature: float | None = Field(None, ge=0, le=1, description="only with an api_version that accepts it")
    top_p: float | None = Field(None, gt=0, le=1, description="only with an api_version that accepts it")
    top_k: int | None = Field(None, ge=1, description="only with an api_version that accepts it")
    stop: list[str] = Field(default_factory=list, description="default stop sequences")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="extra JSON fields sent with every request")
