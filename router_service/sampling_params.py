"""From a validated OpenAI request to the backend's SamplingSpec, with the context-window rules.

Pure functions, used by the ingress process. The window rules follow OpenAI: a prompt that
does not fit is a 400 ``context_length_exceeded``; so is an explicit max_tokens that would
run past the window (no silent clamping: the client asked for something it cannot get).
"""

from __future__ import annotations

from collections.abc import Sequence

from contract.wire import SamplingSpec, ServingError, StructuredOutput
from router_service.errors import context_length_exceeded
from router_service.openai_schema import ChatCompletionRequest, CompletionRequest


def resolve_max_tokens(requested: int | None, prompt_len: int, max_model_len: int,
                       default_cap: int | None = None,
                       prompt_param: str = "messages") -> int:
    """Without max_tokens a request may run to the end of the window, as in vLLM, unless the
    role sets a default (``default_cap``: RoleConfig.default_max_tokens)."""
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
        return remaining if default_cap is None else min(remaining, default_cap)
    if requested > remaining:
        raise context_length_exceeded(
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
            f"{requested} in the completion). Please reduce the prompt or the completion length.",
            param="max_tokens",
        )
    return requested


def check_token_ids(ids: Sequence[int], vocab_size: int, param: str = "prompt") -> None:
    """Raw token ids from a client must index the vocabulary, or the engine fails obscurely
    (and only after the prefill ran)."""
    bad = [t for t in ids if not 0 <= t < vocab_size]
    if bad:
        raise ServingError(f"Invalid value for '{param}': token ids must be in [0, {vocab_size}); "
                           f"got {bad[:5]}.", param=param)


def chat_sampling(body: ChatCompletionRequest, max_tokens: int, vocab_size: int | None,
                  structured: StructuredOutput | None) -> SamplingSpec:
    return _spec(body, max_tokens, body.logprobs_k(), vocab_size, structured)


def completion_sampling(body: CompletionRequest, max_tokens: int,
                        vocab_size: int | None) -> SamplingSpec:
    return _spec(body, max_tokens, body.logprobs, vocab_size, None)


def _spec(body: ChatCompletionRequest | CompletionRequest, max_tokens: int,
          logprobs: int | None, vocab_size: int | None,
          structured: StructuredOutput | None) -> SamplingSpec:
    bias = body.bias_by_token()
    stop_ids = tuple(body.stop_token_ids or ())
    if vocab_size is not None:
        check_token_ids(list(bias), vocab_size, "logit_bias")
        check_token_ids(stop_ids, vocab_size, "stop_token_ids")
    min_tokens = body.min_tokens or 0
    if min_tokens > max_tokens:
        raise ServingError(f"min_tokens ({min_tokens}) is larger than max_tokens ({max_tokens}).",
                           param="min_tokens")
    return SamplingSpec(
        max_tokens=max_tokens,
        # OpenAI's defaults when a field is absent or null.
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        seed=body.seed,
        stop=body.stop_sequences(),
        stop_token_ids=stop_ids,
        logprobs=logprobs,
        ignore_eos=body.ignore_eos,
        min_tokens=min_tokens,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=1.0 if body.repetition_penalty is None else body.repetition_penalty,
        logit_bias=tuple(sorted(bias.items())),
        structured_output=structured,
    )
