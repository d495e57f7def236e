"""Resuming a request on a new decode engine: which prompt tokens take the base model's KV.

A continuation after a decode replica died carries the original prompt x_1..x_n plus the k
tokens already sent to the client. The prefill pool computed only x_1..x_n; the KV boundary of
design.md says x_n and every generated token carry the DECODER's KV. So the new decode engine
pulls the base KV of x_1..x_{n-1} and computes x_n and the k sent tokens with its own weights:
what an uninterrupted request holds, token for token.

vLLM's pull connector loads ``len(prompt)`` tokens on ``do_remote_prefill``; these pure
functions say how many to load instead (vllm_runtime/nixl_connector.py applies them).
"""

from __future__ import annotations

from typing import Any

# Set in kv_transfer_params by the decode server; read by the connector in the engine core.
BASE_KV_TOKENS = "prefillshare_base_kv_tokens"


def resumed_kv_params(params: dict[str, Any], prefilled_tokens: int,
                      block_size: int) -> dict[str, Any]:
    """The prefill's kv_transfer_params for a continuation whose first ``prefilled_tokens``
    prompt tokens are the ones the prefill pool computed.

    Loads the base KV of all but the last of them (the boundary). The remote block list is cut
    to the blocks holding those tokens: vLLM pairs local and remote blocks from the END of the
    remote list (it assumes the missing ones are a local prefix-cache hit), so a longer remote
    list would shift every block by one."""
    if prefilled_tokens < 1:
        raise ValueError("a continuation needs at least one prefilled prompt token")
    base = prefilled_tokens - 1
    keep = -(-base // block_size)  # ceil
    blocks = params.get("remote_block_ids")
    out = dict(params)
    if blocks is not None:
        out["remote_block_ids"] = [list(group)[:keep] for group in blocks]
    out["remote_num_tokens"] = base
    out[BASE_KV_TOKENS] = base
    return out


def resumed_pull_count(params: dict[str, Any] | None, num_prompt_tokens: int,
                       num_computed_tokens: int) -> int | None:
    """Tokens to load for a continuation (0: none, the engine already has them), or None when
    the request is not a continuation and vLLM's own count applies."""
    if not params or not params.get("do_remote_prefill") or BASE_KV_TOKENS not in params:
        return None
    return max(0, min(int(params[BASE_KV_TOKENS]), num_prompt_tokens) - num_computed_tokens)
