"""Training: the DeepSpeed learner (model + optimizer; the only importer of deepspeed), devices
and process groups, run-directory checkpoints."""
