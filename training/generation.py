"""Batched greedy decoding across the KV boundary (evaluation's engine).

Same layout as training (kv_boundary.layout_batch): base KV for each row's shared prefix,
the decoder runs the rest and then one token per step. Rows finish at eos; the batch ends
when all rows have. tests/test_training_eval.py checks it token-for-token against
kv_boundary.reference_greedy_decode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel

from training.kv_boundary import boundary_forward, layout_batch
from training.progress import progress_bar


@torch.no_grad()
def greedy_generate(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sharing_ratio: float = 1.0,
    shared_prefix: Sequence[int] | None = None,
    eos_ids: Sequence[int] = (),
    batch_size: int = 8,
    desc: str | None = None,
) -> list[list[int]]:
    """Generated ids per context (eos excluded), in input order. ``desc``: label of a progress
    bar over the examples (shown only where a human watches: training/progress.py)."""
    # Length-sorted batches waste less compute on padding.
    order = sorted(range(len(contexts)), key=lambda i: len(contexts[i]))
    results: dict[int, list[int]] = {}
    bar = progress_bar(len(contexts), desc, "ex", enabled=None if desc else False)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        shared = [shared_prefix[i] for i in rows] if shared_prefix is not None else None
        outs = _generate_batch(
            base_model, decoder_model, [contexts[i] for i in rows], max_new_tokens, sharing_ratio, shared, eos_ids
        )
        results.update(zip(rows, outs))
        bar.update(len(rows))
    bar.close()
    return [results[i] for i in range(len(contexts))]


def _generate_batch(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    contexts: Sequence[Sequence[int]],
    max_new_tokens: int,
    sharing_ratio: float,
    shared_prefix: Sequence[int] | None,
    eos_ids: Sequence[int],
) -> list[list[int]]:
    device = next(decoder_model.parameters()).device
    b = len(contexts)
    batch = layout_batch(contexts, [[0]] * b, sharing_ratio, device=device, shared_prefix=shared_prefix)
    backbone, head = decoder_model.get_decoder(), decoder_model.get_output_embeddings()
    rows = torch.arange(b, device=device)
    last = batch.target_index[:, 0]  # (B,) the column of x_n in each row
    hidden, cache, mask = boundary_forward(base_model, decoder_model, batch)
    hidden = hidden[rows, last]  # (B, H)
    position = batch.decoder_positions[rows, last] + 1  # (B,) next absolute position
    eos = torch.tensor(list(eos_ids) or [-1], device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        token = head(hidden).float().argmax(dim=-1)  # (B,)
        generated.append(torch.where(finished, -1, token))
        finished |= torch.isin(token, eos)
        if bool(finished.all()):
            break
        # Finished rows keep stepping (cheaper than re-packing); their tokens are dropped.
        mask = torch.cat([mask, torch.ones(b, 1, dtype=mask.dtype, device=device)], dim=1)
        hidden = backbone(
            input_ids=token.unsqueeze(1),
            attention_mask=mask,
            position_ids=position.unsqueeze(1),
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state[:, 0]  # (B, H)
        position = position + 1
    if not generated:
        return [[] for _ in range(b)]
    steps = torch.stack(generated, dim=1).tolist()  # (B, T)
    eos_set = set(eos_ids)
    outs = []
    for row in steps:
        kept = []
        for tok in row:
            if tok == -1 or tok in eos_set:
                break
            kept.append(tok)
        outs.append(kept)
    return outs
