"""What every backend's `DecodeSlots` (`rung.interfaces`) asks of a request before it takes a
slot, so the three (rung-torch's `batching`, rung-jax's and rung-hf's `slots`) refuse alike."""

from __future__ import annotations

from typing import Any

from rung.errors import RungError
from rung.records import GenerationRequest

UNBATCHED = "log-probabilities and echo are not decoded in a batch slot: use backend.generate"


def slot_decodable(request: GenerationRequest) -> bool:
    """Whether a batch slot can decode `request`: log-probabilities and echo come from the
    backend's own generate, one request at a time."""
    return request.logprobs is None and not request.echo


def admit(slots: Any, request: GenerationRequest, refusal: str = UNBATCHED) -> tuple[list[int], Any]:
    """`request`'s prompt ids and Sampling (the backend's `_prepare`: its context and sampling
    checks) once `slots` has a free slot and accepts it; a RungError otherwise (`refusal` when
    `slots.accepts` says no, or the prompt encodes to nothing). Takes no slot."""
    if not slots.free:
        raise RungError(f"all {slots.max_slots} decode slots are busy")
    if not slots.accepts(request):
        raise RungError(refusal)
    prompt, sampling = slots.backend._prepare(request)
    if not prompt:
        raise RungError("the prompt encodes to no tokens: give some text to continue")
    return prompt, sampling
