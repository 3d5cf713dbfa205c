"""Muon for the jax backend: orthogonalised momentum for the hidden matrices, AdamW for the rest.

The same optimizer as rung-torch's `MuonWithAdamW` (rung_torch.engine.muon), step for step:
each hidden matrix keeps a momentum buffer (Nesterov: the update is grad.lerp(buf, beta) after
buf.lerp(grad, 1 - beta)); the update is that momentum brought to the nearest semi-orthogonal
matrix by 5 steps of the quintic Newton-Schulz iteration (coefficients 3.4445, -4.7750, 2.0315),
scaled by sqrt(max(1, out / in)), with decoupled weight decay p *= 1 - lr * wd at Muon's rate.
Everything else (embeddings, the output head, a score head, norm weights) is `optax.adamw`.

Orientation: a torch Linear weight is [out, in], a flax kernel is [in, out] (its transpose).
Newton-Schulz iterates on the wide side of the matrix whichever way it is stored, so a kernel
gets the transpose of torch's update; the scale is taken from the kernel's columns over its
rows (torch's rows over columns), so both frameworks move a weight by the same amount.

Which parameters are hidden matrices is read from the parameter paths (`hidden_matrix_labels`):
the 2-D `kernel`s of linear layers (and LoRA factors, peft's Linear weights on torch) outside
the output head (`lm_head`) and a score head (`score`); a tied head is the embedding, which is
no kernel.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rung.errors import RungError

# rung-torch's coefficients (Keller Jordan's): every singular value in (0, 1] lands in ~[0.7, 1.2].
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
MATRIX_LEAVES = ("kernel", "lora_a", "lora_b")  # stored [in, out] as linear weights
HEADS = ("lm_head", "score")


def newton_schulz(matrix: jax.Array, steps: int = 5, eps: float = 1e-7, dtype: Any = jnp.float32) -> jax.Array:
    """An approximately semi-orthogonal matrix with `matrix`'s singular vectors (U V^T of its SVD,
    singular values brought near 1), computed in `dtype`, as rung_torch.engine.muon.newton_schulz."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.astype(dtype)
    tall = x.shape[-2] > x.shape[-1]
    if tall:  # iterate on the wide side: X X^T is the smaller square
        x = x.T
    x = x / (jnp.linalg.norm(x) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.T
    return x.astype(matrix.dtype)


class MuonState(NamedTuple):
    """The momentum buffer of every matrix Muon moves."""

    momentum: Any


def muon(learning_rate: Any, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
         weight_decay: float = 0.0, ns_dtype: Any = jnp.float32) -> optax.GradientTransformation:
    """Muon's update of 2-D matrices stored as flax kernels ([in, out]); `learning_rate` is Muon's own."""

    def init(params):
        return MuonState(momentum=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if weight_decay and params is None:
            raise ValueError("muon with weight decay needs the parameters")
        buffers = jax.tree.map(lambda buf, g: _lerp(buf, g, 1 - momentum), state.momentum, grads)

        def one(grad, buf, param):
            if grad.ndim != 2:
                raise ValueError(f"muon moves 2-D matrices only, got shape {grad.shape}")
            direction = _lerp(grad, buf, momentum) if nesterov else buf
            orthogonal = newton_schulz(direction, ns_steps, dtype=ns_dtype)
            scale = max(1.0, grad.shape[1] / grad.shape[0]) ** 0.5  # out / in of the [in, out] kernel
            step = -learning_rate * scale * orthogonal
            if weight_decay:
                step = step - learning_rate * weight_decay * param
            return step.astype(grad.dtype)

        updates = jax.tree.map(one, grads, buffers, params if params is not None else grads)
        return updates, MuonState(momentum=buffers)

    return optax.GradientTransformation(init, update)


def _lerp(start: jax.Array, end: jax.Array, weight: float) -> jax.Array:
    """torch.lerp's arithmetic (its two formulas, split at weight 0.5), so the rounding is torch's too."""
    return start + weight * (end - start) if weight < 0.5 else end - (end - start) * (1 - weight)


def _names(path: tuple[Any, ...]) -> list[str]:
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return names[:-1] if names and names[-1] == "value" else names  # nnx.State leaves: Variable.value


def is_hidden_matrix(path: tuple[Any, ...], leaf: Any) -> bool:
    """Whether the parameter at `path` (a jax key path into an nnx.State) is a hidden matrix."""
    names = _names(path)
    return (getattr(leaf, "ndim", 0) == 2 and bool(names) and names[-1] in MATRIX_LEAVES
            and not any(name in HEADS for name in names))


def hidden_matrix_labels(params: Any) -> Any:
    """"muon" for every hidden matrix of `params`, "adamw" for the rest (a tree like `params`)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: "muon" if is_hidden_matrix(p, x) else "adamw", params)


def muon_with_adamw(adamw: optax.GradientTransformation, muon_learning_rate: Any, *, momentum: float,
                    weight_decay: float, ns_dtype: Any = jnp.float32) -> optax.GradientTransformation:
    """Muon (at `muon_learning_rate`) for the hidden matrices, the given `adamw` (the engine's own,
    at the schedule's rate) for the rest. Raises when the parameters hold no hidden matrix."""
    matrices = muon(muon_learning_rate, momentum=momentum, weight_decay=weight_decay, ns_dtype=ns_dtype)
    both = optax.multi_transform({"adamw": adamw, "muon": matrices}, hidden_matrix_labels)

    def init(params):
        if "muon" not in jax.tree.leaves(hidden_matrix_labels(params)):
            raise RungError("trainer.optimizer: muon found no trainable hidden matrix (linear layer) in the model; "
                            "use adamw")
        return both.init(params)

    return optax.GradientTransformation(init, both.update)
