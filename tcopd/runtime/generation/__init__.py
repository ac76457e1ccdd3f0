"""Generation: rollout engines that sample responses — transformers (HF) and vLLM, one
interface. In tcopd "engine" means a rollout engine (``--engine hf|vllm``) and nothing else."""
