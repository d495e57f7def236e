"""vLLM glue shared by the prefill and decode pools: engine args, per-replica environment,
the NIXL tuning plugin and the stats the engines publish. Runs inside Serve replica processes
(and, for the plugin, inside vLLM's EngineCore and worker processes)."""
