"""Options of the `gguf` export format."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rung.options import Options

OutType = Literal["f32", "f16", "bf16", "q8_0"]


class GGUFOptions(Options):
    """Options of `rung export --format gguf`."""

    outtype: OutType = Field("f16", description="type of the 2-D weights (norms stay f32): f32, f16, bf16 or q8_0")
    model_name: str | None = Field(None, description="general.name in the file (default: the model folder's name)")
    base: str | None = Field(None, description="an adapter's base model folder (default: the one it trained on)")
    modelfile: bool = Field(True, description="write an Ollama Modelfile beside the GGUF file")
