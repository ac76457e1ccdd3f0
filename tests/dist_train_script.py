"""Run under torchrun: a tiny TC-OPD run; each rank prints its weights digest.

Usage: dist_train_script.py ROOT [--name RUN] [--resume 1] [train flags...] (ROOT: a tiny world).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from train_fixtures import TinyWorld, tiny_args  # noqa: E402

from tcopd.pipelines import train  # noqa: E402
from tcopd.pipelines.train.config import load_train_config  # noqa: E402


def main() -> None:
    root = Path(sys.argv[1])
    world = TinyWorld(*(root / n for n in ("student", "expert", "anti", "data.jsonl", "tokenizer")))
    world.student, world.expert, world.anti_expert = (
        next((root / n).iterdir()) for n in ("student", "expert", "anti")
    )
    extra = sys.argv[2:]
    run_name, resume = "run", False
    while extra and extra[0] in ("--name", "--resume"):
        if extra[0] == "--name":
            run_name = extra[1]
        else:
            resume = extra[1] == "1"
        extra = extra[2:]
    args = tiny_args(world, root / run_name, *extra)[1:]
    flags = {}
    i = 0
    while i < len(args):
        key = args[i][2:].replace("-", "_")
        flags[key] = args[i + 1]
        i += 2
    for k in (
        "steps",
        "batch_size",
        "samples_per_prompt",
        "max_response_tokens",
        "save_every",
        "zero_stage",
        "lora_rank",
        "max_staleness",
    ):
        if k in flags:
            flags[k] = int(flags[k])
    flags.update({k: v == "true" for k, v in flags.items() if v in ("true", "false")})
    flags["lr"] = float(flags["lr"])
    cfg = load_train_config(None, flags)
    if resume:
        cfg = train.load_resume_config(root / run_name, {"steps": flags.get("steps")})
    result = train.run(cfg, resume=resume, overwrite=not resume)
    print(
        f"RANK {os.environ['RANK']} DIGEST {result.weights_digest} ACC {result.last_metrics['rollout_accuracy']}",
        flush=True,
    )


if __name__ == "__main__":  # vLLM's engine processes re-import this module (spawn)
    main()
