"""The served-teacher client (runtime/scoring/served.py) against a fake vLLM server, no vLLM needed.

The fake server (standard library ``http.server`` in a thread) answers the four endpoints the
client uses, like vLLM 0.32's OpenAI server does (``/v1/models``, ``/tokenize``, ``/detokenize``,
``/v1/completions`` with ``prompt_logprobs``), computing log-probs with a tiny HF model in
float64, and can be told to fail. The real server is tested in test_served_teacher.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from helpers_tiny import make_tiny_qwen3, make_tokenizer, vocab_list

from tcopd.cli.main import main
from tcopd.errors import ConfigError, ModelError
from tcopd.runtime.models import loading as rm
from tcopd.runtime.scoring import served
from tcopd.runtime.scoring.scorer import Scorer


def _ranked(lsm_V, order, tok):
    return {"logprob": lsm_V[tok].item(), "rank": order.index(tok) + 1, "decoded_token": "?"}


class FakeVLLM:
    """A stand-in for ``vllm serve MODEL``; see the module docstring.

    ``fail``: how many scoring requests answer ``fail_status`` first (-1: all of them).
    ``delay_s``: each scoring request's service time (to observe concurrency).
    ``inflight_of[tag]`` / ``peak_of[tag]``: in-flight tokens of the requests whose first
    prompt starts with token ``tag`` (one scoring call's, when calls start theirs apart);
    ``overlapped``: requests of two tags were in flight at once.
    """

    def __init__(self, model_dir, tokenizer_dir=None, max_model_len=256):
        self.model = rm.load_causal_lm(str(model_dir)).double().eval()
        self.tok = rm.load_tokenizer(str(tokenizer_dir or model_dir))
        self.root, self.max_model_len = str(model_dir), max_model_len
        self.fail, self.fail_status, self.delay_s = 0, 503, 0.0
        self.requests = self.sequences = 0
        self.inflight = self.peak_inflight = 0
        self.inflight_of, self.peak_of, self.overlapped = {}, {}, False
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def logprobs(self, ids, k=0):
        """vLLM's prompt_logprobs: each position's own token (with its rank) and its top k."""
        with self.lock, torch.no_grad():
            lsm = torch.log_softmax(self.model(torch.tensor([ids])).logits[0, :-1], -1)
        out = [None]
        for j, t in enumerate(ids[1:]):
            order = lsm[j].argsort(descending=True).tolist()
            row = {
                str(tok): _ranked(lsm[j], order, tok) for tok in (order if k == -1 else order[:k])
            }
            row[str(t)] = _ranked(lsm[j], order, t)
            out.append(row)
        return out

    def answer(self, path, body):
        if path == "/v1/models":
            return 200, {
                "data": [{"id": "fake", "root": self.root, "max_model_len": self.max_model_len}]
            }
        if path == "/tokenize":
            ids = self.tok(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
            return 200, {"tokens": ids["input_ids"], "max_model_len": self.max_model_len}
        if path == "/detokenize":
            return 200, {"prompt": self.tok.decode(body["tokens"])}
        if path == "/v1/completions":
            return self.complete(body)
        return 404, {"error": {"message": f"no route {path}"}}

    def complete(self, body):
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        tokens, tag = sum(len(p) for p in prompts), prompts[0][0]
        with self.lock:
            self.requests += 1
            self.sequences += len(prompts)
            failing = self.fail != 0
            self.fail -= 1 if self.fail > 0 else 0
            self.inflight += tokens
            self.peak_inflight = max(self.peak_inflight, self.inflight)
            self.inflight_of[tag] = self.inflight_of.get(tag, 0) + tokens
            self.peak_of[tag] = max(self.peak_of.get(tag, 0), self.inflight_of[tag])
            self.overlapped |= sum(v > 0 for v in self.inflight_of.values()) > 1
        try:
            time.sleep(self.delay_s)
            if failing:
                return self.fail_status, {"error": {"message": "engine core died (fake)"}}
            k = body.get("prompt_logprobs")
            if body.get("model") != "fake" or not isinstance(k, int) or k < -1:
                return 400, {"error": {"message": f"bad request {body}"}}
            choices = [
                {"index": c, "text": "x", "prompt_logprobs": self.logprobs(p, k)}
                for c, p in enumerate(prompts)
            ]
            return 200, {"choices": choices[::-1]}  # the client must go by "index"
        finally:
            with self.lock:
                self.inflight -= tokens
                self.inflight_of[tag] -= tokens

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code, payload):
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(*fake.answer(self.path, {}))

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self._send(*fake.answer(self.path, json.loads(self.rfile.read(n) or b"{}")))

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("served")
    tok = make_tokenizer(d)
    w = {
        "dir": d,
        "tok_dir": tok,
        "student": make_tiny_qwen3(d, tok, seed=1),
        "teacher": make_tiny_qwen3(d, tok, seed=2),
        "tok": rm.load_tokenizer(str(tok)),
    }
    g = torch.Generator().manual_seed(0)
    w["prompts"] = [torch.randint(4, 100, (2 + i % 5,), generator=g).tolist() for i in range(12)]
    w["responses"] = [torch.randint(4, 100, (1 + 2 * i,), generator=g).tolist() for i in range(12)]
    fake = FakeVLLM(w["teacher"])
    w["fake"] = fake
    yield w
    fake.stop()


@pytest.fixture
def fake(world):
    f = world["fake"]
    f.fail, f.fail_status, f.delay_s, f.requests, f.sequences = 0, 503, 0.0, 0, 0
    f.peak_inflight = 0
    f.inflight_of, f.peak_of, f.overlapped = {}, {}, False
    return f


def ref64(model_dir, p, r):
    m = rm.load_causal_lm(str(model_dir)).double()
    with torch.no_grad():
        lsm = torch.log_softmax(m(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
    return lsm.gather(-1, torch.tensor(r)[:, None])[:, 0]


def teacher(url, **settings):
    kw = dict(retries=2, backoff_s=0.01, timeout_s=10.0) | settings
    return served.ServedTeacher(
        "code", [url] if isinstance(url, str) else url, served.ServerSettings(**kw)
    )


def connected(world, url, **settings):
    t = teacher(url, **settings)
    served.connect({"code": t}, world["tok"], 64)
    return t


def test_served_logprobs_match_float64_reference(world, fake):
    t = connected(world, fake.url, max_inflight_tokens=50)
    fake.requests = fake.sequences = 0  # the start-time probe was one
    out = served.score_all({"code": t}, world["prompts"], world["responses"])["code"]
    for p, r, lp in zip(world["prompts"], world["responses"], out, strict=True):
        assert lp.dtype == torch.float32 and lp.shape == (len(r),)
        torch.testing.assert_close(lp.double(), ref64(world["teacher"], p, r), atol=1e-5, rtol=0)
    lengths = [len(p) + len(r) for p, r in zip(world["prompts"], world["responses"])]
    assert fake.sequences == len(lengths)  # each sequence once,
    assert 1 < fake.requests == len(served.pack_requests(lengths, 50)) < len(lengths)  # packed


def test_requests_are_packed_longest_first_under_the_token_cap():
    groups = served.pack_requests([5, 30, 10, 20, 40, 1], max_tokens=40)
    assert groups == [[4], [1], [3, 2, 0, 5]]  # 40 | 30 (+20 > 40) | 20+10+5+1
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert served.pack_requests([50, 3], max_tokens=40) == [[0], [1]]  # too long: alone


def test_scorer_mixes_local_and_served_in_one_structure(world, fake):
    local = rm.load_causal_lm(str(world["student"]))
    mixed = Scorer({"student": local}, servers={"code": connected(world, fake.url)})
    assert mixed.names == ["student", "code"]
    res = mixed.score(world["prompts"], world["responses"])
    both_local = Scorer({"student": local, "code": rm.load_causal_lm(str(world["teacher"]))})
    want = both_local.score(world["prompts"], world["responses"])
    assert list(res.logprobs) == list(want.logprobs)
    for name in want.logprobs:
        for a, b in zip(res.logprobs[name], want.logprobs[name], strict=True):
            assert a.shape == b.shape and a.dtype == b.dtype
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert res.stats["model_tokens"] == want.stats["model_tokens"]


def test_inflight_token_bound_and_two_servers_share_the_work(world, fake):
    other = FakeVLLM(world["teacher"])
    try:
        fake.delay_s = other.delay_s = 0.05
        t = connected(world, [fake.url, other.url], max_inflight_tokens=30)
        fake.requests = other.requests = 0
        fake.peak_inflight = other.peak_inflight = 0
        served.score_all({"code": t}, world["prompts"], world["responses"])
        assert fake.sequences + other.sequences == len(world["prompts"]) + 2  # + 2 probes
        assert fake.requests >= 2 and other.requests >= 2  # least loaded: both get work
        longest = max(len(p) + len(r) for p, r in zip(world["prompts"], world["responses"]))
        for f in (fake, other):  # a sequence over the bound goes alone, else the bound holds
            assert f.peak_inflight <= max(30, longest)
    finally:
        other.stop()


def test_overlapping_calls_keep_their_own_load_state(world, fake):
    """Two score calls of one teacher at once, each in its own thread and event loop (as a
    Background left running and the next step's call would be): each gets its own answers,
    the in-flight bound holds per call, and the teacher is left as connect left it."""
    fake.delay_s = 0.02
    t = connected(world, fake.url, max_inflight_tokens=30)
    left_by_connect = (dict(vars(t)), [dict(vars(s)) for s in t.servers])
    fake.inflight_of, fake.peak_of = {}, {}  # the start-time probe was one
    calls = {tag: [[tag, *p[1:]] for p in world["prompts"]] for tag in (5, 6)}  # told apart
    start, out, errors = threading.Barrier(2), {}, {}

    def call(tag):
        try:
            start.wait(timeout=10)
            out[tag] = served.score_all({"code": t}, calls[tag], world["responses"])["code"]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors[tag] = e

    threads = [threading.Thread(target=call, args=(tag,), daemon=True) for tag in calls]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    assert not any(th.is_alive() for th in threads), "a call hung"
    assert not errors, errors
    assert fake.overlapped  # the two calls' requests were in flight together
    longest = max(len(p) + len(r) for p, r in zip(world["prompts"], world["responses"]))
    assert longest <= 30 and set(fake.peak_of) == {5, 6}
    assert all(peak <= 30 for peak in fake.peak_of.values())  # the bound, per call
    model = rm.load_causal_lm(str(world["teacher"])).double()
    for tag, prompts in calls.items():
        for p, r, lp in zip(prompts, world["responses"], out[tag], strict=True):
            with torch.no_grad():
                lsm = torch.log_softmax(model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
            want = lsm.gather(-1, torch.tensor(r)[:, None])[:, 0]
            torch.testing.assert_close(lp.double(), want, atol=1e-5, rtol=0)
    assert (dict(vars(t)), [dict(vars(s)) for s in t.servers]) == left_by_connect


def test_background_close_stops_a_slow_call(world):
    slow = FakeVLLM(world["teacher"])
    slow.httpd.handle_error = lambda *args: None  # its late answers go to closed connections
    try:
        t = connected(world, slow.url, max_inflight_tokens=30, timeout_s=30.0)
        slow.delay_s, slow.requests = 5.0, 0
        bg = served.Background({"code": t}, world["prompts"], world["responses"])
        deadline = time.monotonic() + 5
        while slow.requests == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert slow.requests > 0
        t0 = time.perf_counter()
        bg.close()
        took = time.perf_counter() - t0
        assert took < 1.5 and not bg._thread.is_alive()
        sent = slow.requests
        time.sleep(0.5)
        assert slow.requests == sent  # nothing sent after close
        lengths = [len(p) + len(r) for p, r in zip(world["prompts"], world["responses"])]
        assert sent < len(served.pack_requests(lengths, 30))  # the rest were never sent
        t0 = time.perf_counter()
        bg.close()  # again: nothing to do
        assert time.perf_counter() - t0 < 0.1
        with pytest.raises(ModelError, match="closed before its result"):
            bg.result()
    finally:
        slow.stop()


def test_background_close_after_result_is_a_no_op(world, fake):
    t = connected(world, fake.url)
    fake.requests = 0
    with served.Background({"code": t}, world["prompts"][:3], world["responses"][:3]) as bg:
        got = bg.result()
    sent = fake.requests  # the with block closed it: after result(), nothing to do
    t0 = time.perf_counter()
    bg.close()
    bg.close(timeout_s=0.0)
    assert time.perf_counter() - t0 < 0.1 and fake.requests == sent
    assert bg.result() is got and len(got["code"]) == 3


def test_background_close_does_not_raise_the_threads_error(world, fake):
    t = connected(world, fake.url, retries=0)
    fake.fail = -1
    bg = served.Background({"code": t}, world["prompts"][:1], world["responses"][:1])
    bg._thread.join(timeout=10)
    bg.close()  # the caller raises its own error; the thread's is not raised here
    with pytest.raises(ModelError, match="HTTP 503"):
        bg.result()


def test_transient_5xx_is_retried_with_backoff(world, fake):
    t = connected(world, fake.url, retries=3, backoff_s=0.05)
    fake.fail, fake.requests = 2, 0
    t0 = time.perf_counter()
    out = served.score_all({"code": t}, world["prompts"][:1], world["responses"][:1])["code"]
    assert time.perf_counter() - t0 >= 0.05 + 0.1  # waits 0.05 s, then 0.1 s
    assert fake.requests == 3
    p, r = world["prompts"][0], world["responses"][0]
    torch.testing.assert_close(out[0].double(), ref64(world["teacher"], p, r), atol=1e-5, rtol=0)


def test_retries_exhausted_give_one_line_naming_teacher_url_and_message(world, fake):
    t = connected(world, fake.url, retries=2)
    fake.fail, fake.requests = -1, 0
    with pytest.raises(ModelError) as e:
        served.score_all({"code": t}, world["prompts"][:1], world["responses"][:1])
    msg = str(e.value)
    assert "\n" not in msg and "'code'" in msg and fake.url in msg
    assert "3 tries" in msg and "HTTP 503" in msg and "engine core died (fake)" in msg
    assert fake.requests == 3


def test_client_error_is_not_retried(world, fake):
    t = connected(world, fake.url)
    fake.fail, fake.fail_status, fake.requests = -1, 400, 0
    with pytest.raises(ModelError, match=r"refused a scoring request \(HTTP 400\).*fake"):
        served.score_all({"code": t}, world["prompts"][:1], world["responses"][:1])
    assert fake.requests == 1


def test_server_gone_mid_run_is_retried_then_named(world):
    gone = FakeVLLM(world["teacher"])
    t = connected(world, gone.url, retries=1)
    gone.stop()
    with pytest.raises(ModelError) as e:
        served.score_all({"code": t}, world["prompts"][:2], world["responses"][:2])
    assert "no answer after 2 tries" in str(e.value) and gone.url in str(e.value)
    assert "Connect" in str(e.value)


def test_retry_moves_to_the_other_server(world, fake):
    dead = FakeVLLM(world["teacher"])
    t = connected(world, [dead.url, fake.url], retries=1)
    dead.stop()
    out = served.score_all({"code": t}, world["prompts"][:4], world["responses"][:4])["code"]
    assert len(out) == 4 and fake.sequences >= 4  # all scored by the live one


def test_unreachable_url_at_start(world):
    closed = FakeVLLM(world["teacher"])
    closed.stop()
    with pytest.raises(
        ModelError, match=r"'code': cannot reach http://127\.0\.0\.1:\d+ .*serve-teacher"
    ):
        connected(world, closed.url)


@pytest.mark.parametrize("kind", ["bigger vocabulary", "different ids"])
def test_tokenizer_mismatch_at_start(world, kind):
    d = world["dir"] / kind.replace(" ", "_")
    if kind == "bigger vocabulary":
        tok = make_tokenizer(d, vocab_size=120)
    else:  # the same words, numbered differently
        tok = make_tokenizer(d, vocab_size=100)
        spec = json.loads((tok / "tokenizer.json").read_text())
        words = vocab_list(100)
        order = words[:4] + list(reversed(words[4:]))
        spec["model"]["vocab"] = {w: i for i, w in enumerate(order)}
        (tok / "tokenizer.json").write_text(json.dumps(spec))
    other = FakeVLLM(world["teacher"], tokenizer_dir=tok)
    try:
        with pytest.raises(ModelError, match="'code' at .*tokenizer differs from the student's"):
            connected(world, other.url)
    finally:
        other.stop()


def test_context_too_short_at_start(world):
    short = FakeVLLM(world["teacher"], max_model_len=32)
    try:
        with pytest.raises(ConfigError, match=r"max_model_len 32 < 65 .*--max-model-len"):
            connected(world, short.url)
    finally:
        short.stop()


def test_response_parsing_rejects_a_non_vllm_answer():
    with pytest.raises(ModelError, match="no prompt_logprobs"):
        served.response_logprobs({"choices": [{"text": "x"}]}, [1, 2, 3], 2, "t")
    plp = [None, {"2": {"logprob": -1.5}}, {"3": {"logprob": -9999.0}}]
    values = served.response_logprobs({"choices": [{"prompt_logprobs": plp}]}, [1, 2, 3], 2, "t")
    assert values[0] == -1.5 and values[1] == float("-inf")  # vLLM's stand-in for -inf


def test_server_env_bounds_the_cpu_kv_cache_unless_told():
    assert served.server_env({}, cuda=False)["VLLM_CPU_KVCACHE_SPACE"] == "4"
    assert served.server_env({"VLLM_CPU_KVCACHE_SPACE": "1"}, cuda=False) == {
        "VLLM_CPU_KVCACHE_SPACE": "1"
    }
    assert served.server_env({"A": "b"}, cuda=True) == {"A": "b"}


def test_server_command_has_the_scoring_flags_and_user_flags_win():
    cmd = served.server_command("/m/code", 8001, dtype="bfloat16", max_model_len=4096,
                                python="/venv/bin/python", extra=["--max-logprobs", "5"])  # fmt: skip
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    line = " ".join(cmd)
    for flag in ("--model /m/code", "--port 8001", "--dtype bfloat16", "--max-model-len 4096",
                 "--max-logprobs 64", "--no-enable-log-requests"):  # fmt: skip
        assert flag in line
    assert cmd[-2:] == ["--max-logprobs", "5"]


def test_serve_teacher_refuses_a_python_without_vllm(capsys, tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\nexit 1\n")
    fake_python.chmod(0o755)
    with pytest.raises(SystemExit) as e:
        main(["serve-teacher", "/m/code", "--python", str(fake_python)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "vLLM is not installed" in err and len(err.strip().splitlines()) == 1


# -------------------------------------------------------------------------- tcopd score, served
def run_cli(args):
    try:
        main(args)
    except SystemExit as e:
        return e.code or 0
    return 0


def test_score_cli_mixes_local_and_served_and_compares(world, fake, tmp_path, capsys):
    rows = [
        {"id": i, "prompt_ids": p, "response_ids": r}
        for i, (p, r) in enumerate(zip(world["prompts"], world["responses"]))
    ]
    src = tmp_path / "rollouts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scores.jsonl"
    code = run_cli([
        "score", "--student", str(world["student"]), "--expert", str(world["student"]),
        "--teacher", f"code={fake.url}:-0.5", "--lambdas", "1.5",
        "--input", str(src), "--output", str(out), "--compare-local",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "code served vs local: max |Δ|" in captured.out
    for row, got in zip(rows, map(json.loads, out.read_text().splitlines()), strict=True):
        want = ref64(world["teacher"], row["prompt_ids"], row["response_ids"])
        torch.testing.assert_close(
            torch.tensor(got["logprobs"]["code"], dtype=torch.float64), want, atol=1e-5, rtol=0
        )
    cfg = (tmp_path / "scores.jsonl.config.yaml").read_text()
    assert f"code={fake.url}:-0.5" in cfg  # reusable with --config


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--temperature", "0.7"], "gives log-probs at temperature 1, not 0.7"),
        (["--placement", "server", "--expert", "/m/e", "--lambdas", "1"], "'expert' is a path"),
        (["--teacher", "x=http://h:1:2:3"], "is not a number"),
        (["--teacher", "x=http://h:1;2"], "unexpected"),
    ],
)
def test_score_cli_served_refusals_are_one_line(world, tmp_path, capsys, extra, needle):
    args = [
        "score",
        "--student",
        str(world["student"]),
        "--teacher",
        "code=http://127.0.0.1:9:-0.5",
    ]
    args += ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"), *extra]
    assert run_cli(args) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1, err


# ------------------------------------------------------------------ top k (the dense loss)
def test_top_k_rows_are_the_teachers_own(world, fake):
    """score_top_k: each position's k most likely ids and log-probs and the own token's, equal
    to the teacher's float64 log-softmax (the fake computes it; ties are measure-zero here)."""
    import asyncio

    t = connected(world, fake.url)
    prompts, responses = world["prompts"], world["responses"]
    k, V = 5, len(world["tok"])

    async def run():
        async with served._client(t.settings, 4) as client:
            return await t.score_top_k(client, prompts, responses, k, V)

    rows = asyncio.run(run())
    model = rm.load_causal_lm(str(world["teacher"])).double().eval()
    for p, r, row in zip(prompts, responses, rows, strict=True):
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
        want = lsm.topk(k, dim=-1)
        assert torch.equal(row.ids_TK, want.indices)
        torch.testing.assert_close(row.logprobs_TK.double(), want.values, rtol=0, atol=1e-6)
        own = lsm.gather(1, torch.tensor(r)[:, None]).squeeze(1)
        torch.testing.assert_close(row.token_T.double(), own, rtol=0, atol=1e-6)


def _payload(rows):
    """A completions answer for one prompt [7, 9, 9] whose last two positions say ``rows``."""
    return {"choices": [{"index": 0, "prompt_logprobs": [None, *rows]}]}


def _entry(lp, rank):
    return {"logprob": lp, "rank": rank, "decoded_token": "?"}


GOOD = {"3": _entry(-0.5, 1), "4": _entry(-1.0, 2), "9": _entry(-3.0, 7)}


@pytest.mark.parametrize(
    "row, needle",
    [
        ({"3": _entry(-0.5, 1), "9": _entry(-3.0, 7)}, "1 entries of rank ≤ 2"),  # fewer than k
        ({"3": _entry(-0.5, 1), "4": _entry(-1.0, 1), "9": _entry(-3.0, 7)}, "ranks [1, 1]"),
        ({"3": _entry(-0.5, 1), "400": _entry(-1.0, 2), "9": _entry(-3.0, 7)}, "token id 400"),
        ({"3": _entry(float("nan"), 1), "4": _entry(-1.0, 2), "9": _entry(-3.0, 7)}, "not finite"),
        ({"3": _entry(-9999.0, 1), "4": _entry(-1.0, 2), "9": _entry(-3.0, 7)}, "not finite"),
        ({"3": _entry(-2.0, 1), "4": _entry(-1.0, 2), "9": _entry(-3.0, 7)}, "not sorted"),
        ({"3": _entry(-0.5, 1), "4": _entry(-1.0, 2)}, "malformed"),  # no own token
    ],
)
def test_top_k_bad_answers_are_one_error_naming_the_position(row, needle):
    ok = served.response_top_k(_payload([GOOD, GOOD]), [7, 9, 9], 2, 2, 100, "served teacher 't'")
    assert ok.ids_TK.tolist() == [[3, 4], [3, 4]] and ok.token_T.tolist() == [-3.0, -3.0]
    with pytest.raises(ModelError) as e:
        served.response_top_k(
            _payload([GOOD, row]), [7, 9, 9], 2, 2, 100, "served teacher 't'", 0, 5
        )
    assert "served teacher 't', response 5, position 1" in str(e.value) and needle in str(e.value)


def _dense_run(tmp_path, world, capsys, name, *extra):
    from safetensors.torch import load_file
    from train_fixtures import run_cli, tiny_args

    out = tmp_path / name
    args = tiny_args(world, out, "--loss", "dense", "--steps", "1", "--max-prompt-tokens", "64")
    code, _, err = run_cli([*args, *extra], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    weights = load_file(next((out / "checkpoints" / "step-000001" / "model").glob("*.safetensors")))
    return rows[-1], weights


def test_dense_loss_with_a_served_teacher(tmp_path, capsys):
    """tcopd train --loss dense with the anti-expert on a (fake) server: whole rows (k = -1)
    train exactly like the local anti-expert; a top 4 trains and logs its support."""
    from train_fixtures import make_world

    world = make_world(tmp_path, tie=False)
    fake = FakeVLLM(world.anti_expert, max_model_len=512)
    try:
        local_row, local = _dense_run(tmp_path, world, capsys, "local")
        url = ["--anti-expert", fake.url]
        full_row, full = _dense_run(tmp_path, world, capsys, "full", *url, "--served-top-k", "-1")
        top_row, _ = _dense_run(tmp_path, world, capsys, "top4", *url, "--served-top-k", "4")
    finally:
        fake.stop()
    # the same update to float rounding. Adam's first step moves a weight by lr·g/(|g| + 1e-8)
    # (lr 1e-3): rounding in g (the server's rows are float32) shows only where |g| is ~1e-8,
    # a handful of weights; any mistake in the served path would move nearly all of them by ~lr
    diff = torch.cat([(full[k] - local[k]).abs().flatten() for k in local])
    assert (diff > 1e-6).float().mean() < 1e-3 and diff.max() <= 1e-3, diff.max()
    assert "served_support" not in local_row
    assert full_row["served_outside"] == 0 and full_row["served_student_mass"] > 0.999
    assert full_row["served_support"] == len(rm.load_tokenizer(str(world.tokenizer)))
    assert 0 < top_row["served_student_mass"] < 1 and 0 < top_row["served_outside"] < 1
    assert top_row["served_support"] <= 4 and top_row["clip_fraction"] is None
    # whole rows of ~100 log-probs cost more per position than a top 4 (JSON: ~40 bytes each)
    assert full_row["served_bytes_per_position"] > 10 * top_row["served_bytes_per_position"] > 0


@pytest.mark.parametrize("k", [1, 4, 16, -1])
def test_served_and_local_copies_of_a_teacher_give_the_same_loss(world, fake, k):
    """The dense loss with served teachers (core/dense_support.py) at top k: the fake server's
    answers and the same teacher's own float64 log-softmax, cut to its top k here, give the
    same loss and gradient (k = -1: whole rows)."""
    import asyncio

    from tcopd.core.dense import Head
    from tcopd.core.dense_support import ServedRows, common_support, support_dense_loss

    t = connected(world, fake.url)
    prompts, responses = world["prompts"], world["responses"]
    V = len(world["tok"])
    kk = V if k == -1 else k

    async def run():
        async with served._client(t.settings, 4) as client:
            return await t.score_top_k(client, prompts, responses, k, V)

    answers = asyncio.run(run())
    model = rm.load_causal_lm(str(world["teacher"])).double().eval()
    own_rows, served_rows = [], []
    for p, r, row in zip(prompts, responses, answers, strict=True):
        with torch.no_grad():
            lsm = torch.log_softmax(model(torch.tensor([p + r])).logits[0, len(p) - 1 : -1], -1)
        top = lsm.topk(kk, dim=-1)
        own = lsm.gather(1, torch.tensor(r)[:, None]).squeeze(1)
        own_rows.append(common_support(top.indices[None], top.values[None], own[None]))
        served_rows.append(
            common_support(
                row.ids_TK[None], row.logprobs_TK[None].double(), row.token_T[None].double()
            )
        )

    def cat(rows: list[ServedRows]) -> ServedRows:
        return ServedRows(
            torch.cat([x.ids_NS for x in rows]),
            torch.cat([x.logp_KNS for x in rows], dim=1),
            torch.cat([x.logp_y_KN for x in rows], dim=1),
        )

    targets = torch.tensor([tok for r in responses for tok in r])
    N, H = len(targets), 8
    g = torch.Generator().manual_seed(0)
    student = Head(torch.randn(V, H, generator=g, dtype=torch.float64))
    losses, grads = [], []
    for rows in (cat(own_rows), cat(served_rows)):
        h = torch.randn(N, H, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        h.requires_grad_(True)
        loss_N, _ = support_dense_loss(
            h, student, [], [], torch.zeros(N, 0, dtype=torch.float64), rows,
            torch.ones(N, 1, dtype=torch.float64), targets, None,
        )  # fmt: skip
        loss_N.sum().backward()
        losses.append(loss_N.detach())
        grads.append(h.grad)
    assert (cat(own_rows).ids_NS >= 0).sum() > 0  # a support to compare on
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)
