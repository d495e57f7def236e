"""From a validated OpenAI request to the backend's SamplingSpec, with the context-window rules.

Pure functions, used by the ingress process. The window rules follow OpenAI: a prompt that
does not fit is a 400 ``context_length_exceeded``; so is an explicit max_tokens that would
run past the window (no silent clamping: the client asked for something it cannot get).
"""

from __future__ import annotations

from collections.abc import Sequence

from contract.wire import SamplingSpec, ServingError
from router_service.errors import context_length_exceeded
from router_service.openai_schema import ChatCompletionRequest, CompletionRequest

# Without a max_tokens, a request may run to the end of the window; cap it so that one client
# that forgot the field does not hold a decoder slot for thousands of tokens.
DEFAULT_MAX_TOKENS_CAP = 256


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int,
                       default_cap: int = DEFAULT_MAX_TOKENS_CAP,
                       prompt_param: str = "messages") -> int:
    if prompt_len == 0:
        raise ServingError("The prompt is empty after tokenization.", param=prompt_param)
    if prompt_len >= max_model_len:
        raise context_length_exceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, your "
            f"prompt has {prompt_len} tokens, which leaves no room for a completion. Please "
            "reduce the length of the prompt.",
            param=prompt_param,
        )
    remaining = max_model_len - prompt_len
    if requested is None:
        return min(remaining, default_cap)
    if requested > remaining:
        raise context_length_exceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
            f"{requested} in the completion). Please reduce the prompt or the completion length.",
            param="max_tokens",
        )
    return requested


def check_token_ids(ids: Sequence[int], vocab_size: int) -> None:
    """Raw token ids from a client must index the vocabulary, or the engine fails obscurely."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ServingError(f"Token ids must be in [0, {vocab_size}); got {bad[:5]}.", param="prompt")


def chat_sampling(body: ChatCompletionRequest, max_tokens: int) -> SamplingSpec:
    return _spec(body, max_tokens, body.logprobs_k())


def completion_sampling(body: CompletionRequest, max_tokens: int) -> SamplingSpec:
    return _spec(body, max_tokens, body.logprobs)


def _spec(body: ChatCompletionRequest | CompletionRequest, max_tokens: int,
          logprobs: int | None) -> SamplingSpec:
    return SamplingSpec(
        max_tokens=max_tokens,
        # OpenAI's defaults when a field is absent or null.
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_sequences(),
        logprobs=logprobs,
        ignore_eos=body.ignore_eos,
    )
