"""Cache-conditioned fine-tuning loss (paper Eq. 7): response-token NLL across the boundary.

L(theta_dec) = - sum_t log P(y_t | y_<t, C_base; theta_dec); C_base is a constant.
Per-sample sums are returned so that padding provably changes nothing (tests compare each
row of a padded batch with the row alone); the optimizer step divides by the token count
of the whole global batch, i.e. a token-weighted mean, identical for any worker count.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from training.kv_boundary import BoundaryBatch, boundary_logits, layout_batch


def response_nll(logits: torch.Tensor, batch: BoundaryBatch) -> torch.Tensor:
    """Summed NLL of each row's response tokens (B,); pad slots contribute exactly zero."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, M, V)
    token_logp = logp.gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)  # (B, M)
    return -(token_logp * batch.response_mask).sum(dim=1)  # (B,)


def per_sample_nll(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    sharing_ratio: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed NLL per sample (B,), response token count per sample (B,))."""
    device = next(decoder_model.parameters()).device
    batch = layout_batch(contexts, responses, sharing_ratio, device=device)
    logits = boundary_logits(base_model, decoder_model, batch)  # (B, M, V)
    return response_nll(logits, batch), batch.response_mask.sum(dim=1)
