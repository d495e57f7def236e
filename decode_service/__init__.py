"""Decode pools: Serve replicas running role decoders (or base + LoRA adapters) that pull the
prompt KV from the prefill pool over NIXL and generate."""
