"""vLLM's NixlConnector (pull mode), able to resume a request on a new decode engine.

The one piece of vLLM this product subclasses. Named ``NixlConnector`` like vLLM's on purpose:
vLLM's config switches behaviour on that name (``has_connector("NixlConnector")``), and the
factory loads this class through ``kv_connector_module_path``. Only the scheduler-side count of
tokens to pull changes, and only for a continuation (vllm_runtime/kv_resume.py); every other
request takes vLLM's path unchanged.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.nixl import NixlConnector as VllmNixlConnector

from vllm_runtime.kv_resume import resumed_pull_count

MODULE_PATH = __name__


class NixlConnector(VllmNixlConnector):
    def get_num_new_matched_tokens(self, request: Any,
                                   num_computed_tokens: int) -> tuple[int | None, bool]:
        count = resumed_pull_count(request.kv_transfer_params, request.num_prompt_tokens,
                                   num_computed_tokens)
        if count is None:
            return super().get_num_new_matched_tokens(request, num_computed_tokens)
        # 0: the tokens are already here; vLLM's alloc hook then only notifies the prefill
        # engine to free its blocks (its full-local-hit path).
        return count, count > 0
