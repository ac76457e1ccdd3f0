"""Teacher scoring: the π forward (per-token log-probs without T×V logits), the multi-teacher
scorer (local, offload, shard), teachers served by vLLM, teachers that are prompts."""
