"""Shared-prompt attention computed block by block, for rung's own `Transformer`.

A shared-prompt row (`rung.objectives`: the prompt, segment 0, then completions 1..k, then
padding -1) lets each completion see its row's prompt and itself, causally. The dense form is
a (T, T) mask over the whole row; most of it is masked out (a completion never sees the
others), yet every entry is computed: with G completions of C tokens after a prompt of P, the
dense attention costs (P + G C)^2 a head, the blocks P^2 / 2 + G C (P + C). Here each row's
prompt attends causally to itself, and each completion's queries to its row's prompt keys and
its own keys, gathered into one small dense batch (completions x heads x C x (P + C)); the
outputs are put back in the row's order. The same numbers as the dense mask up to float
rounding (tests/rlhf/test_shared_attention.py); a padding position's output is zero here
(it sees only itself under the dense mask), and no real token reads it either way.

`SharedPromptAttention.of(segment_ids)` is None where the rows do not have that layout
(a segment split in two, a prompt not at the start): the caller keeps the dense mask then.
The model takes the object as its `attention_mask` and calls `attend(q, k, v)` per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SharedPromptAttention:
    """Block-wise attention of shared-prompt rows `segment_ids` [B, T] (see the module docstring)."""

    def __init__(self, rows: torch.Tensor, q_pos: torch.Tensor, valid: torch.Tensor, prompt_len: torch.Tensor,
                 prompt: int) -> None:
        self.rows, self.q_pos, self.valid, self.P = rows, q_pos, valid, prompt
        N, C = q_pos.shape
        device = q_pos.device
        j = torch.arange(C, device=device)
        sees_prompt = torch.arange(prompt, device=device)[None, :] < prompt_len[rows][:, None]  # (N, P)
        causal = (j[:, None] >= j[None, :])[None].expand(N, C, C)
        self.mask = torch.cat([sees_prompt[:, None, :].expand(N, C, prompt), causal], -1)[:, None]  # (N, 1, C, P + C)
        self.out_rows = rows[:, None].expand(N, C)[valid]
        self.out_pos = q_pos[valid]

    @classmethod
    def of(cls, segment_ids: torch.Tensor) -> "SharedPromptAttention | None":
        seg = segment_ids.long()
        B, T = seg.shape
        device = seg.device
        prompt_len = (seg == 0).sum(-1)
        P = int(prompt_len.max()) if B else 0
        before = torch.cat([torch.full((B, 1), -2, dtype=seg.dtype, device=device), seg[:, :-1]], 1)
        rows, starts = ((seg > 0) & (seg != before)).nonzero(as_tuple=True)  # each completion's first token
        if P == 0 or len(rows) == 0:
            return None
        ids = seg[rows, starts]
        lengths = (seg[rows] == ids[:, None]).sum(-1)
        C = int(lengths.max())
        j = torch.arange(C, device=device)
        q_pos = (starts[:, None] + j).clamp(max=T - 1)
        valid = j[None, :] < lengths[:, None]
        index = torch.arange(T, device=device)[None, :]
        prompt_first = ((seg == 0) == (index < prompt_len[:, None])).all()  # the prompt at the start
        whole = ((seg[rows[:, None], q_pos] == ids[:, None]) | ~valid).all()  # each completion in one piece
        if not bool(prompt_first & whole):
            return None
        return cls(rows, q_pos, valid, prompt_len, P)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, hd), k and v (B, KV, T, hd), rotary applied -> (B, H, T, hd)."""
        B, H, T, hd = q.shape
        P, rows = self.P, self.rows
        group = H // k.shape[1]
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        prompt = F.scaled_dot_product_attention(q[:, :, :P], k[:, :, :P], v[:, :, :P], is_causal=True)
        r = rows[:, None]
        qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, T, H, hd)
        cq = qt[r, self.q_pos].transpose(1, 2)  # (N, H, C, hd)
        ck = torch.cat([k[rows, :, :P], kt[r, self.q_pos].transpose(1, 2)], 2)  # (N, H, P + C, hd)
        cv = torch.cat([v[rows, :, :P], vt[r, self.q_pos].transpose(1, 2)], 2)
        own = F.scaled_dot_product_attention(cq, ck, cv, attn_mask=self.mask)  # (N, H, C, hd)
        out = torch.cat([prompt, prompt.new_zeros(B, H, T - P, hd)], 2).transpose(1, 2)  # (B, T, H, hd)
        out = out.index_put((self.out_rows, self.out_pos), own.transpose(1, 2)[self.valid])
        return out.transpose(1, 2)
