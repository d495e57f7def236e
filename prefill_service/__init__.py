"""The prefill pool: Serve replicas running the frozen base model as NIXL KV producers."""
