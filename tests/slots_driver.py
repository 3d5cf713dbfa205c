"""Drive a backend's `DecodeSlots` (continuous batching) step by step, as rung serve's scheduler
does: shared by the torch, hf and jax slot tests."""

from __future__ import annotations

from rung.records import Completion, GenerationRequest


def run(slots, arrivals: dict[int, list[GenerationRequest]], cancel_at: dict[int, list[int]] | None = None,
        most_active: list[int] | None = None) -> dict[int, Completion]:
    """Drive `slots` step by step: the requests of `arrivals[k]` join before step k; the
    requests numbered in `cancel_at[k]` (in arrival order) are cancelled before step k.
    Returns each finished request's Completion (its deltas joined), by arrival number;
    `most_active` gets the number of active slots at every step."""
    arrivals = {k: list(v) for k, v in arrivals.items()}
    cancel_at = cancel_at or {}
    owner: dict[int, int] = {}  # slot -> arrival number
    slot_of: dict[int, int] = {}
    texts: dict[int, list[str]] = {}
    done: dict[int, Completion] = {}
    number, step = 0, 0
    while any(arrivals.values()) or slots.active:
        for n in cancel_at.get(step, []):
            slots.cancel(slot_of[n])
            owner.pop(slot_of[n], None)
        for request in arrivals.pop(step, []):
            slot = slots.add(request)
            owner[slot], slot_of[number], texts[number] = number, slot, []
            number += 1
        if most_active is not None:
            most_active.append(slots.active)
        for slot, delta in slots.step():
            n = owner[slot]
            texts[n].append(delta.text)
            if delta.finish_reason is not None:
                done[n] = Completion("".join(texts[n]), delta.finish_reason, delta.usage, delta.model)
                del owner[slot]
        step += 1
    return done
