"""Gradient error of the dense loss with served (top-k) teachers, against the exact dense loss.

On the shipped toy world (V = 139): the student samples responses to 32 training prompts (τ = 1,
96 tokens, seed 0); at those fixed prefixes the exact dense gradient with respect to the
student's logits (TC-OPD (1.5, −0.5) under the paper's 1/K, or OPD) is compared with

- the served estimator (``tcopd.core.dense_support``) with both teachers "served" at their
  top k, k ∈ {1, 4, 16, 64, V}: the support is the intersection of the two top-k sets, one
  sampled token per position (as in training), π_old = π_θ;
- the paper's sampled estimator: ``−A_t ∇log π_θ(y_t)``, A_t = β(s_t(y_t) − log π_θ(y_t)).

Each estimator is drawn R times (fresh tokens y_t ∼ π_θ at every position), and the batch
gradient (summed over positions, N × V) is compared with the exact one: cosine and
‖est − exact‖ / ‖exact‖, mean ± standard error over the R draws; and the mean support size and
π_θ's mass on it. The served rows here are the teachers' own log-softmax rows cut to their top
k: what a server returns (tests/test_served_client.py checks the two agree).

``--world smollm2``: SmolLM2-135M-Instruct (V = 49,152; ``tcopd prepare smollm2``) as student
and teachers, the teachers being its own weights behind a prompt (docs/results.md §7: a concise
few-shot expert, examples/smollm2/concise.yaml, and a verbose anti-expert, verbose.yaml), the
toy-math questions in SmolLM2's chat template; 8 prompts × 64 tokens by default.

    .venv/bin/python benchmarks/bench_served_topk.py               # ~15 s on 2 cores
    .venv/bin/python benchmarks/bench_served_topk.py --lambdas 1   # OPD (the expert alone)
    .venv/bin/python benchmarks/bench_served_topk.py --world smollm2
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcopd.core.dense import Head  # noqa: E402
from tcopd.core.dense_support import common_support, support_dense_loss  # noqa: E402
from tcopd.pipelines.train.data import load_prompts  # noqa: E402
from tcopd.runtime.models.loading import load_causal_lm, load_tokenizer  # noqa: E402
from tcopd.runtime.toy import ensure_toy  # noqa: E402


def logits_at_responses(model, prompt, response) -> torch.Tensor:
    """The model's logits at the positions that predict each response token (T × V)."""
    with torch.no_grad():
        out = model(torch.tensor([prompt + response])).logits[0]
    return out[len(prompt) - 1 : len(prompt) + len(response) - 1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", choices=("toy", "smollm2"), default="toy")
    ap.add_argument("--lambdas", default="1.5,-0.5")
    ap.add_argument("--prompts", type=int, default=None, help="default: toy 32, smollm2 8")
    ap.add_argument("--tokens", type=int, default=None, help="default: toy 96, smollm2 64")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--ks", default="1,4,16,64,-1")
    a = ap.parse_args()
    torch.manual_seed(0)
    lams = [float(x) for x in a.lambdas.split(",")]
    toy = ensure_toy()
    if a.world == "toy":
        tok = load_tokenizer(toy.student)
        student = load_causal_lm(toy.student).eval()
        teachers = [load_causal_lm(toy.expert).eval(), load_causal_lm(toy.anti_expert).eval()]
        teachers = teachers[: len(lams)]
        data = load_prompts(str(toy.train_files["math"]), tok, "plain", 256)
        n_prompts, n_tokens = a.prompts or 32, a.tokens or 96
        own = {k: data.ids for k in range(len(teachers))}
    else:
        from tcopd.runtime.scoring.contexts import ContextRenderer, load_contexts

        smol = Path.home() / ".cache" / "tcopd" / "smollm2"
        tok = load_tokenizer(smol)
        student = load_causal_lm(smol).eval()
        teachers = [student] * len(lams)  # the same weights, each behind its own prompt
        data = load_prompts(str(toy.train_files["math"]), tok, "chat", 128)
        n_prompts, n_tokens = a.prompts or 8, a.tokens or 64
        names = ["expert", "anti_expert"][: len(lams)]
        files = ["examples/smollm2/concise.yaml", "examples/smollm2/verbose.yaml"]
        contexts = load_contexts([f"{n}={f}" for n, f in zip(names, files)], names)
        renderer = ContextRenderer(contexts, {n: tok for n in names}, "chat")
        rendered = renderer.batch(data.messages[:n_prompts])
        own = {k: rendered[n] for k, n in enumerate(names)}
    z_s, z_t, z_r = [], [[] for _ in teachers], []
    for i, ids in enumerate(data.ids[:n_prompts]):
        with torch.no_grad():
            out = student.generate(
                torch.tensor([ids]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                max_new_tokens=n_tokens, pad_token_id=tok.pad_token_id,
            )  # fmt: skip
        response = out[0, len(ids) :].tolist()
        z_s.append(logits_at_responses(student, ids, response))
        z_r.append(z_s[-1])  # π_ref: the student's initial weights (step 1)
        for k, t in enumerate(teachers):
            z_t[k].append(logits_at_responses(t, own[k][i], response))
    dtype = torch.float64 if a.world == "toy" else torch.float32  # (49,152 columns: memory)
    zs, zr = torch.cat(z_s).to(dtype), torch.cat(z_r).to(dtype)
    zt = [torch.cat(x).to(dtype) for x in z_t]
    N, V = zs.shape
    K = len(teachers)
    w = torch.tensor([lam / K for lam in lams], dtype=dtype)  # "all": the paper's 1/K
    beta = 1.0
    c_ref = 1.0 - float(w.sum()) / beta
    lsm = [torch.log_softmax(z, -1) for z in zt]
    logp_s = torch.log_softmax(zs, -1)
    s = c_ref * torch.log_softmax(zr, -1) + sum((w[k] / beta) * lsm[k] for k in range(K))
    logp_star = torch.log_softmax(s, -1)
    p = logp_s.exp()
    kl = (p * (logp_s - logp_star)).sum(-1, keepdim=True)
    exact = beta * p * (logp_s - logp_star - kl)  # ∂kl_t/∂z_t, N × V
    eye = Head(lambda h_CH: h_CH)  # the hidden states are the logits (a callable projection)
    print(f"{a.world}: {N} positions of {n_prompts} responses, V = {V}, λ = {lams}, β = {beta}")
    print("| estimator | k | cosine | ‖est − exact‖/‖exact‖ | mean |S_t| | π_θ mass on S_t |")
    print("|---|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(1)
    draws = [torch.multinomial(p, 1, generator=g).squeeze(1) for _ in range(a.draws)]

    def summary(cos: list[float], rel: list[float]) -> tuple[str, str]:
        se = lambda v: statistics.stdev(v) / len(v) ** 0.5  # noqa: E731
        return (f"{statistics.mean(cos):.3f} ± {se(cos):.3f}",
                f"{statistics.mean(rel):.2f} ± {se(rel):.2f}")  # fmt: skip

    def against_exact(grad: torch.Tensor, cos: list[float], rel: list[float]) -> None:
        cos.append(float(torch.nn.functional.cosine_similarity(grad.flatten(), exact.flatten(), 0)))
        rel.append(float((grad - exact).norm() / exact.norm()))

    for k in [int(x) for x in a.ks.split(",")]:
        width = V if k == -1 else k
        top = [z.topk(width, -1) for z in lsm]
        cos, rel, sizes, masses = [], [], [], []
        for y in draws:
            rows = common_support(
                torch.stack([t.indices for t in top]),
                torch.stack([t.values for t in top]),
                torch.stack([x.gather(1, y[:, None]).squeeze(1) for x in lsm]),
            )
            h = zs.clone().requires_grad_(True)
            local_coef = torch.full((N, 1), c_ref, dtype=zs.dtype)
            served_coef = (w / beta).to(zs.dtype).expand(N, K)
            loss, stats = support_dense_loss(
                h, eye, [zr], [eye], local_coef, rows, served_coef, y, None, beta,
                chunk_size=1024,
            )  # fmt: skip
            (grad,) = torch.autograd.grad(loss.sum(), h)
            against_exact(grad, cos, rel)
            sizes.append(float(stats["support"].mean()))
            masses.append(float(stats["student_mass"].mean()))
            del rows, grad, loss
        c, r = summary(cos, rel)
        label = "V (whole rows)" if k == -1 else str(k)
        print(f"| served top k | {label} | {c} | {r} | {statistics.mean(sizes):.1f} | "
              f"{statistics.mean(masses):.3f} |", flush=True)  # fmt: skip
        del top
    cos, rel = [], []
    for y in draws:
        adv = beta * (s.gather(1, y[:, None]) - logp_s.gather(1, y[:, None]))  # N × 1
        onehot = torch.nn.functional.one_hot(y, V).to(zs.dtype)
        against_exact(-adv * (onehot - p), cos, rel)
    c, r = summary(cos, rel)
    print(f"| sampled (paper) | — | {c} | {r} | 0 | 0 |")


if __name__ == "__main__":
    main()
