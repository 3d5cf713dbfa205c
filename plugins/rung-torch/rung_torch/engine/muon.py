"""Muon: orthogonalised momentum for the hidden matrices, AdamW for everything else.

As in Keller Jordan's modded-nanoGPT speedruns (github.com/KellerJordan/Muon): each 2-D
hidden weight matrix keeps a momentum buffer (Nesterov by default); its update is that
momentum replaced by the nearest semi-orthogonal matrix, found by 5 steps of a quintic
Newton-Schulz iteration, scaled by sqrt(max(1, rows / cols)). Every singular value of the
update is then close to 1, so each direction of the matrix moves by about the same amount,
however skewed the gradient's spectrum is. Embeddings, the output head, norm weights and
biases are not matrices in that sense (their rows are looked up or read one by one) and stay
on AdamW, in the same optimizer, so one state dict holds both (a checkpoint resumes it).

The learning rate the core's loop sets on every group each step (its schedule) is AdamW's;
a Muon group moves by that rate times its `lr_ratio` (muon_lr / learning_rate), so Muon
follows the same warm-up and decay.
"""

from __future__ import annotations

from typing import Any

import torch

# The quintic's coefficients (Keller Jordan): they push every singular value in (0, 1] into
# about [0.7, 1.2] in 5 steps, faster than coefficients that converge to exactly 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(matrix: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately semi-orthogonal matrix with `matrix`'s singular vectors: U V^T of its SVD,
    singular values brought near 1 (not exactly: see NS_COEFFICIENTS). bf16 on accelerators,
    fp32 on a CPU (which has no fast bf16 matmul on most machines)."""
    a, b, c = NS_COEFFICIENTS
    x = matrix.to(torch.bfloat16 if matrix.device.type == "cuda" else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X X^T is the smaller square
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + eps)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(matrix.dtype)


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over groups of two kinds: `{"muon": True, "lr_ratio", "momentum", "nesterov",
    "ns_steps", "weight_decay"}` (2-D matrices) and `{"muon": False, "betas", "eps", "weight_decay"}`
    (AdamW, computed by torch's own `adamw` function, so those parameters move exactly as
    `torch.optim.AdamW` would move them)."""

    def __init__(self, groups: list[dict[str, Any]], lr: float, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8) -> None:
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=0.0, muon=False, lr_ratio=1.0,
                        momentum=0.95, nesterov=True, ns_steps=5)
        super().__init__(groups, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups hold 2-D matrices only")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr = group["lr"] * group["lr_ratio"]
        beta, decay = group["momentum"], group["weight_decay"]
        for p in group["params"]:
            if p.grad is None:
                continue
            grad = p.grad
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - beta)
            update = grad.lerp(buf, beta) if group["nesterov"] else buf
            update = newton_schulz(update, group["ns_steps"])
            scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
            if decay:
                p.mul_(1 - lr * decay)
            p.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        from torch.optim.adamw import adamw

        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:  # as torch.optim.AdamW initialises it
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=True, amsgrad=False, beta1=beta1,
              beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)
