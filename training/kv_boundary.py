"""The KV boundary between the frozen base model and a role's decoder: THE reference.

Plain torch + transformers, no Ray: training, evaluation and the serving contract test all
import this module, so that the three agree on exactly one convention (docs design.md):

    context x_1..x_n, response y_1..y_m
    KV of x_1..x_k      from the BASE model (k = shared_prefix_length(n, r))
    x_{k+1}..x_n, y_1..y_{m-1}  run by the DECODER with its own weights, attending to the
                        base KV plus its own KV, predicting y_1..y_m.

r = 1 gives k = n - 1: what vLLM P/D does (the decode engine re-runs the last prompt token).
r = 0 gives k = 0: the decoder's conventional forward, no base KV at all.

Batches: each sample has its own k, so the base part and the decoder part are packed
separately, each right-padded, and the decoder's attention mask is their concatenation:

    cache columns   [ x_1..x_k | pad ]            (B, K)   from the base, no grad
    decoder columns [ x_{k+1}..x_n y_1..y_{m-1} | pad ]  (B, L)  positions k, k+1, ...

A mask with holes is fine: transformers builds causality from cache indices and padding from
the 2D mask; RoPE positions come from position_ids, which we always pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel

TokenRows = torch.Tensor | Sequence[Sequence[int]]

# r * (n - 1) is computed in floating point; without the slack 0.29 * 100 floors to 28.
_FLOOR_SLACK = 1e-9


def shared_prefix_length(context_len: int, sharing_ratio: float) -> int:
    """How many leading context positions take base KV: floor(r * (n - 1)).

    The last context token is always run by the decoder (it produces y_1's logits), so even
    r = 1 leaves one position to the decoder.
    """
    if not 0.0 <= sharing_ratio <= 1.0:
        raise ValueError(f"sharing_ratio must be in [0, 1], got {sharing_ratio}")
    if context_len < 1:
        raise ValueError("a context needs at least one token")
    return math.floor(sharing_ratio * (context_len - 1) + _FLOOR_SLACK)


def clone_cache(cache: DynamicCache, config) -> DynamicCache:
    """A deep copy: models append to (mutate) a cache passed to them, so reuse needs a clone."""
    copy = DynamicCache(config=config)
    for layer_idx, layer in enumerate(cache.layers):
        if layer.is_initialized and layer.keys.numel() > 0:
            copy.update(layer.keys.clone(), layer.values.clone(), layer_idx=layer_idx)
    return copy


@torch.no_grad()
def base_prefix_cache(
    base_model: PreTrainedModel,
    input_ids_prefix: torch.Tensor | Sequence[int],
    attention_mask: torch.Tensor | None = None,
) -> DynamicCache:
    """The base model's KV for a prefix (B, K), or a single list of ids; no gradient.

    With right padding (attention_mask given), pad columns hold finite garbage KV that the
    decoder must mask out: pass the same mask columns to it.
    """
    ids = _as_batch(input_ids_prefix, base_model)
    if ids.shape[1] == 0:
        raise ValueError("empty prefix: use no cache at all (sharing ratio 0)")
    if attention_mask is None:
        attention_mask = torch.ones_like(ids)
    # A row with no real token would be fully masked: sdpa gives NaN there, and NaN * 0
    # weight still poisons the decoder. Let such rows see their first (pad) column instead.
    safe_mask = attention_mask.clone()
    safe_mask[safe_mask.sum(dim=1) == 0, 0] = 1
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    cache = DynamicCache(config=base_model.config)
    base_model(
        input_ids=ids,
        attention_mask=safe_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # the base never decodes: skip the (B, K, V) logits
    )
    return cache


@dataclass(frozen=True)
class BoundaryBatch:
    """One batch laid out across the boundary (see the module docstring)."""

    base_ids: torch.Tensor  # (B, K) right-padded; K may be 0
    base_mask: torch.Tensor  # (B, K)
    decoder_ids: torch.Tensor  # (B, L) right-padded
    decoder_mask: torch.Tensor  # (B, L)
    decoder_positions: torch.Tensor  # (B, L) absolute positions k_i, k_i + 1, ...
    target_index: torch.Tensor  # (B, M) decoder column whose output predicts y_j
    targets: torch.Tensor  # (B, M) y_j, left-justified, 0 in pad slots
    response_mask: torch.Tensor  # (B, M) 1 where y_j exists


def layout_batch(
    contexts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    sharing_ratio: float,
    pad_id: int = 0,
    device: torch.device | str = "cpu",
    shared_prefix: Sequence[int] | None = None,
) -> BoundaryBatch:
    """Packs per-sample token lists into base and decoder columns for one sharing ratio.

    shared_prefix overrides k per sample (0 <= k <= n - 1): the multi-turn study gives the
    decoder its own KV from where its earlier output starts.
    """
    if len(contexts) != len(responses) or not contexts:
        raise ValueError("need as many responses as contexts, at least one")
    base_rows, dec_rows, starts, first_targets, resp_lens = [], [], [], [], []
    for i, (ctx, resp) in enumerate(zip(contexts, responses)):
        if len(resp) < 1:
            raise ValueError("every response needs at least one token")
        k = shared_prefix_length(len(ctx), sharing_ratio) if shared_prefix is None else shared_prefix[i]
        if not 0 <= k <= len(ctx) - 1:
            raise ValueError(f"shared prefix {k} outside [0, {len(ctx) - 1}]")
        base_rows.append(list(ctx[:k]))
        dec_rows.append(list(ctx[k:]) + list(resp[:-1]))
        starts.append(k)
        first_targets.append(len(ctx) - k - 1)  # the column of x_n predicts y_1
        resp_lens.append(len(resp))
    base_ids, base_mask = _right_pad(base_rows, pad_id)
    dec_ids, dec_mask = _right_pad(dec_rows, pad_id)
    cols = torch.arange(dec_ids.shape[1])
    positions = torch.tensor(starts).unsqueeze(1) + cols  # (B, L)
    targets, _ = _right_pad([list(r) for r in responses], pad_id=0)
    m = max(resp_lens)
    j = torch.arange(m)
    response_mask = (j < torch.tensor(resp_lens).unsqueeze(1)).long()  # (B, M)
    # Pad targets point at column 0: harmless, their logits are masked/zeroed.
    target_index = (torch.tensor(first_targets).unsqueeze(1) + j) * response_mask  # (B, M)
    return BoundaryBatch(
        base_ids=base_ids.to(device),
        base_mask=base_mask.to(device),
        decoder_ids=dec_ids.to(device),
        decoder_mask=dec_mask.to(device),
        decoder_positions=positions.to(device),
        target_index=target_index.to(device),
        targets=targets.to(device),
        response_mask=response_mask.to(device),
    )


def conditioned_logits(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    context_ids: TokenRows,
    response_ids: TokenRows,
    sharing_ratio: float = 1.0,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Teacher-forced logits (B, M, V) predicting y_1..y_m across the KV boundary.

    context_ids (B, N) and response_ids (B, M) are tensors or lists of token lists. With
    tensors, attention_mask (B, N + M) covers torch.cat([context_ids, response_ids], 1) and
    marks real tokens (each part padded on either side). Output row b is left-justified:
    logits[b, j] predicts the j-th real response token of row b; pad slots are zeros.
    Gradient flows into decoder_model only; base_model may be None when r = 0.
    """
    contexts, responses = _split_rows(context_ids, response_ids, attention_mask)
    device = next(decoder_model.parameters()).device
    batch = layout_batch(contexts, responses, sharing_ratio, device=device)
    return boundary_logits(base_model, decoder_model, batch)


def boundary_cache(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    batch: BoundaryBatch,
) -> tuple[DynamicCache, torch.Tensor]:
    """The base KV of a laid-out batch and the decoder's attention mask over (cache, own)."""
    cache = DynamicCache(config=decoder_model.config)
    mask = batch.decoder_mask
    if batch.base_ids.shape[1] > 0:
        if base_model is None:
            raise ValueError("a shared prefix (sharing_ratio > 0) needs the base model")
        cache = base_prefix_cache(base_model, batch.base_ids, batch.base_mask)
        mask = torch.cat([batch.base_mask, batch.decoder_mask], dim=1)  # (B, K + L)
    return cache, mask


def boundary_forward(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    batch: BoundaryBatch,
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """The decoder's backbone over its columns, on the base KV: hidden states (B, L, H), the
    cache (base KV + the decoder's own, for further decoding) and the attention mask."""
    cache, mask = boundary_cache(base_model, decoder_model, batch)
    hidden = decoder_model.get_decoder()(
        input_ids=batch.decoder_ids,
        attention_mask=mask,
        position_ids=batch.decoder_positions,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state  # (B, L, H)
    return hidden, cache, mask


def boundary_logits(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    batch: BoundaryBatch,
) -> torch.Tensor:
    """conditioned_logits on an already laid-out batch (the training loop's entry)."""
    hidden, _, _ = boundary_forward(base_model, decoder_model, batch)  # (B, L, H)
    # Only the response columns go through the (H -> V) head: r = 0 would otherwise build
    # logits for every context token.
    index = batch.target_index.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, M, H)
    picked = hidden.gather(1, index)  # (B, M, H)
    logits = decoder_model.get_output_embeddings()(picked)  # (B, M, V)
    return logits * batch.response_mask.unsqueeze(-1).to(logits.dtype)


@torch.no_grad()
def reference_greedy_decode(
    base_model: PreTrainedModel | None,
    decoder_model: PreTrainedModel,
    context_ids: Sequence[int],
    max_new_tokens: int,
    sharing_ratio: float = 1.0,
    stop_at_eos: bool = False,
) -> tuple[list[int], list[float]]:
    """Greedy tokens and the float32 log_softmax logprob of each, one sample, no batching.

    Runs to max_new_tokens unless stop_at_eos (vLLM contract tests use ignore_eos).
    """
    context = list(context_ids)
    k = shared_prefix_length(len(context), sharing_ratio)
    device = next(decoder_model.parameters()).device
    if k > 0:
        if base_model is None:
            raise ValueError("sharing_ratio > 0 needs the base model")
        cache = base_prefix_cache(base_model, context[:k])
    else:
        cache = DynamicCache(config=decoder_model.config)
    eos = _eos_ids(decoder_model) if stop_at_eos else set()
    step_ids = torch.tensor([context[k:]], device=device)  # (1, n - k)
    position = k
    tokens: list[int] = []
    logprobs: list[float] = []
    for _ in range(max_new_tokens):
        positions = torch.arange(position, position + step_ids.shape[1], device=device).unsqueeze(0)
        out = decoder_model(
            input_ids=step_ids,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logp = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # (V,)
        token = int(logp.argmax())
        tokens.append(token)
        logprobs.append(float(logp[token]))
        if token in eos:
            break
        position += step_ids.shape[1]
        step_ids = torch.tensor([[token]], device=device)
    return tokens, logprobs


def _eos_ids(model: PreTrainedModel) -> set[int]:
    eos = model.generation_config.eos_token_id if model.generation_config else None
    eos = eos if eos is not None else model.config.eos_token_id
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, list) else {int(eos)}


def _as_batch(ids: torch.Tensor | Sequence[int], model: PreTrainedModel) -> torch.Tensor:
    if isinstance(ids, torch.Tensor):
        return ids if ids.dim() == 2 else ids.unsqueeze(0)
    device = next(model.parameters()).device
    return torch.tensor([list(ids)], dtype=torch.long, device=device)


def _right_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def _split_rows(
    context_ids: TokenRows,
    response_ids: TokenRows,
    attention_mask: torch.Tensor | None,
) -> tuple[list[list[int]], list[list[int]]]:
    """Real tokens of each row, whatever the padding side."""
    if not isinstance(context_ids, torch.Tensor):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with tensors; lists carry no padding")
        return [list(r) for r in context_ids], [list(r) for r in response_ids]
    assert isinstance(response_ids, torch.Tensor)
    ctx, resp = context_ids, response_ids
    if ctx.dim() == 1:
        ctx, resp = ctx.unsqueeze(0), resp.unsqueeze(0)
        attention_mask = attention_mask.unsqueeze(0) if attention_mask is not None else None
    n = ctx.shape[1]
    if attention_mask is None:
        attention_mask = torch.ones(ctx.shape[0], n + resp.shape[1], dtype=torch.long)
    keep = attention_mask.bool().cpu()
    ctx_cpu, resp_cpu = ctx.cpu(), resp.cpu()
    contexts = [ctx_cpu[b][keep[b, :n]].tolist() for b in range(ctx.shape[0])]
    responses = [resp_cpu[b][keep[b, n:]].tolist() for b in range(ctx.shape[0])]
    return contexts, responses
