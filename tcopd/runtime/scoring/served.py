"""Teachers served by vLLM's OpenAI-compatible server (placement ``server``, docs/serving.md).

A teacher's score of a response is the log-prob of every response token given what precedes
it. vLLM's ``/v1/completions`` computes exactly that for a prompt given as token ids when asked
for ``prompt_logprobs``: we send ``prompt_ids + response_ids`` with ``max_tokens=1`` (the
smallest generation the endpoint allows) and ``prompt_logprobs=0`` (only the prompt's own
token at each position), and read the response positions back.

Choices:

- **httpx**, asynchronous; sequences sorted longest first and packed into requests of up to
  ``REQUEST_TOKENS`` tokens (no more than ``max_inflight_tokens``) and ``REQUEST_SEQUENCES``
  sequences: the completions endpoint takes a list of token-id prompts and answers one choice
  per prompt. vLLM batches all concurrent sequences itself (continuous batching); packing only
  saves HTTP and JSON work per sequence (toy model: 1 sequence per request was 3× slower than 8).
- **A bound on in-flight tokens per server** (``max_inflight_tokens``: prompt + response tokens
  of the requests sent and not yet answered), so a big batch does not queue thousands of
  requests on one server; a sequence longer than the bound goes alone.
- **Several servers per teacher**: each request goes to the least-loaded server (fewest
  in-flight tokens), ties broken round-robin. A retry prefers another server.
- **Per-call state**: the in-flight tokens, the round-robin turn and the condition requests
  wait on belong to one :meth:`ServedTeacher.score` call (a :class:`Load` it makes), never to
  the long-lived teacher, so two calls (even overlapping, in two threads and event loops) do
  not share them; the bound holds per call.
- **Background** (:class:`Background`): :func:`score_all` in a thread while local models score;
  :meth:`Background.close` cancels it (no further requests) when the caller gives up.
- **Retries** on connection errors, timeouts and 5xx answers, with exponential backoff
  (``backoff_s``, doubling, at most 8 s), then one :class:`ModelError` naming the teacher, the
  URL and the last thing the server said. A 4xx answer is the request's fault: no retry.
- **Start-time checks** (:func:`connect`): the server answers ``/v1/models``; its tokenizer
  splits a probe text (with the student's special tokens) into the student's ids
  (``/tokenize``) and decodes the student's last token id, and the id after it, as the student
  does (``/detokenize``: the vocabulary's size); ``max_model_len`` holds the longest sequence plus the one generated token; a
  scoring request on the probe returns finite log-probs.
- Served log-probs are raw (τ = 1): vLLM computes prompt log-probs before any sampling
  processor (temperature included). Callers refuse another temperature (docs/serving.md).

vLLM is never imported here: it runs in its own process (``tcopd serve-teacher`` builds the
command line, :func:`server_command`).
"""

from __future__ import annotations

import asyncio
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import torch

from tcopd.errors import ConfigError, ModelError
from tcopd.runtime.models.loading import PROBE_TEXT

MAX_BACKOFF_S = 8.0
REQUEST_TOKENS = 8192  # per scoring request (a longer sequence goes alone)
REQUEST_SEQUENCES = 64
VLLM_MODULE = "vllm.entrypoints.openai.api_server"
_NEG_INF_SENTINEL = -9999.0  # vLLM's JSON stand-in for a -inf log-prob
_BYTES = "_tcopd_bytes"  # added to a scoring answer: its size on the wire (the dense loss's logs)


@dataclass(frozen=True)
class ServerSettings:
    """How the client talks to servers (one set for all served teachers of a run)."""

    timeout_s: float = 300.0  # per request (connect: at most 10 s)
    retries: int = 4  # after the first try
    max_inflight_tokens: int = 65536  # per server
    backoff_s: float = 0.5  # wait before the first retry; doubles each retry

    def __post_init__(self) -> None:
        if not self.timeout_s > 0 or self.retries < 0 or self.max_inflight_tokens < 1:
            raise ConfigError(
                "teacher_timeout_s must be > 0, teacher_retries >= 0 and "
                f"teacher_max_inflight_tokens >= 1 (got {self.timeout_s}, {self.retries}, "
                f"{self.max_inflight_tokens})"
            )


@dataclass
class _Server:
    url: str
    model: str = ""  # the served model's id, from /v1/models
    root: str = ""  # the path or Hub id the server loaded
    max_model_len: int = 0


class Load:
    """One scoring call's load-balancing state, made inside the call's event loop: the tokens
    sent to each server and not yet answered (``inflight[k]``: server ``k`` of the teacher),
    the round-robin turn for ties, and the condition requests wait on for room."""

    def __init__(self, n_servers: int):
        self.inflight = [0] * n_servers
        self.turn = 0
        self.cond = asyncio.Condition()


@dataclass
class ServedTeacher:
    """One teacher behind one or more vLLM servers; see the module docstring."""

    name: str
    urls: Sequence[str]
    settings: ServerSettings = field(default_factory=ServerSettings)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError(f"served teacher {self.name!r} has no URL")
        self.servers = [_Server(u.rstrip("/")) for u in self.urls]

    @property
    def model_root(self) -> str:
        """The path or Hub id the (first) server loaded; known after :func:`connect`."""
        return self.servers[0].root

    # -- scoring -----------------------------------------------------------------------------
    async def score(
        self,
        client: httpx.AsyncClient,
        prompts: Sequence[list[int]],
        responses: Sequence[list[int]],
    ) -> list[torch.Tensor]:
        """Float32 log-probs of each response's tokens (CPU), in input order."""
        if not all(s.model for s in self.servers):
            raise ModelError(f"served teacher {self.name!r}: not connected (call served.connect)")
        load = Load(len(self.servers))  # this call's own: see the module docstring
        seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
        cap = min(REQUEST_TOKENS, self.settings.max_inflight_tokens)
        groups = pack_requests([len(x) for x in seqs], cap)
        answers = await asyncio.gather(
            *(self._score_group(client, seqs, responses, g, load) for g in groups)
        )
        out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        for group, values in zip(groups, answers, strict=True):
            for i, v in zip(group, values, strict=True):
                out[i] = torch.tensor(v, dtype=torch.float32)
        return out

    async def score_top_k(
        self,
        client: httpx.AsyncClient,
        prompts: Sequence[list[int]],
        responses: Sequence[list[int]],
        k: int,
        vocab_size: int,
    ) -> list[TopK]:
        """Each response position's top ``k`` (ids and log-probs, :class:`TopK`) and the
        log-prob of the response's own token, in input order; every answer checked
        (:func:`response_top_k`; ids below ``vocab_size``, the model's rows). ``k = -1``: whole
        rows (``vocab_size`` entries). The dense loss with served teachers uses them
        (core/dense_support.py)."""
        if not all(s.model for s in self.servers):
            raise ModelError(f"served teacher {self.name!r}: not connected (call served.connect)")
        load = Load(len(self.servers))
        seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
        cap = min(REQUEST_TOKENS, self.settings.max_inflight_tokens)
        groups = pack_requests([len(x) for x in seqs], cap)
        who = f"served teacher {self.name!r}"

        async def one(group: list[int]) -> list[TopK]:
            ids = [seqs[i] for i in group]
            payload = await self.request(client, ids, sum(len(x) for x in ids), load, k)
            width = vocab_size if k == -1 else k
            rows = [
                response_top_k(payload, seqs[i], len(responses[i]), width, vocab_size, who, c, i)
                for c, i in enumerate(group)
            ]
            size = payload.get(_BYTES, 0) if isinstance(payload, dict) else 0
            positions = max(sum(len(responses[i]) for i in group), 1)
            return [replace(r, bytes=round(size * len(r.token_T) / positions)) for r in rows]

        answers = await asyncio.gather(*(one(g) for g in groups))
        out: list[TopK | None] = [None] * len(prompts)
        for group, rows in zip(groups, answers, strict=True):
            for i, row in zip(group, rows, strict=True):
                out[i] = row
        return out  # type: ignore[return-value]

    async def _score_group(
        self,
        client: httpx.AsyncClient,
        seqs: list[list[int]],
        responses: Sequence,
        group: list[int],
        load: Load,
    ) -> list[list[float]]:
        ids = [seqs[i] for i in group]
        payload = await self.request(client, ids, sum(len(x) for x in ids), load)
        who = f"served teacher {self.name!r}"
        return [
            response_logprobs(payload, seqs[i], len(responses[i]), who, k)
            for k, i in enumerate(group)
        ]

    async def request(
        self,
        client: httpx.AsyncClient,
        ids: list[list[int]],
        cost: int,
        load: Load | None = None,
        top_k: int = 0,
    ) -> dict:
        """POST one scoring request (token-id prompts ``ids``, ``cost`` tokens) with retries;
        the JSON answer (see the module docstring).

        ``load``: the calling :meth:`score`'s :class:`Load` (made in the running event loop),
        shared by the requests of one call; without it the request has a fresh one of its own
        (nothing else in flight: the first server, unless it fails). ``top_k``: ask for each
        position's ``top_k`` most likely tokens besides its own (``prompt_logprobs``)."""
        if load is None:
            load = Load(len(self.servers))
        last, failed = "no answer", set()
        server = self.servers[0]
        for attempt in range(self.settings.retries + 1):
            if attempt:
                await asyncio.sleep(
                    min(self.settings.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                )
            k = await self._acquire(load, cost, failed)
            server = self.servers[k]
            try:
                resp = await client.post(
                    f"{server.url}/v1/completions", json=_body(server, ids, top_k)
                )
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}".rstrip(": ")
                failed.add(server.url)
                continue
            finally:
                await self._release(load, k, cost)
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {server_message(resp)}"
                failed.add(server.url)
                continue
            if resp.status_code >= 400:
                raise ModelError(
                    f"served teacher {self.name!r} at {server.url} refused a scoring request "
                    f"(HTTP {resp.status_code}): {server_message(resp)}"
                )
            payload = _json(resp, f"served teacher {self.name!r} at {server.url}")
            if isinstance(payload, dict):
                payload[_BYTES] = len(resp.content)
            return payload
        tries = self.settings.retries + 1
        raise ModelError(
            f"served teacher {self.name!r} at {server.url}: no answer after {tries} tries "
            f"(last: {last}); restart the server (a training run then continues with --resume)"
        )

    async def _acquire(self, load: Load, cost: int, avoid: set[str]) -> int:
        """Wait for a server with room for ``cost`` tokens; the least loaded, round-robin ties.
        Its index in :attr:`servers`."""
        async with load.cond:
            while True:
                k = self._pick(load, cost, avoid)
                if k is not None:
                    load.inflight[k] += cost
                    return k
                await load.cond.wait()

    def _pick(self, load: Load, cost: int, avoid: set[str]) -> int | None:
        cap, used = self.settings.max_inflight_tokens, load.inflight
        everyone = range(len(self.servers))
        pool = [i for i in everyone if self.servers[i].url not in avoid] or list(everyone)
        fits = [i for i in pool if used[i] == 0 or used[i] + cost <= cap]
        if not fits:
            return None
        n = len(self.servers)
        rank = {s.url: (i - load.turn) % n for i, s in enumerate(self.servers)}
        load.turn += 1
        return min(fits, key=lambda i: (used[i], rank[self.servers[i].url]))

    async def _release(self, load: Load, k: int, cost: int) -> None:
        async with load.cond:
            load.inflight[k] -= cost
            load.cond.notify_all()


def pack_requests(lengths: Sequence[int], max_tokens: int = REQUEST_TOKENS) -> list[list[int]]:
    """Indexes of sequences, longest first, cut into requests of at most ``max_tokens`` tokens
    and :data:`REQUEST_SEQUENCES` sequences (a longer sequence is a request alone)."""
    groups: list[list[int]] = []
    size = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if groups and size + lengths[i] <= max_tokens and len(groups[-1]) < REQUEST_SEQUENCES:
            groups[-1].append(i)
            size += lengths[i]
        else:
            groups.append([i])
            size = lengths[i]
    return groups


def _body(server: _Server, ids: list[list[int]], top_k: int = 0) -> dict[str, Any]:
    return {
        "model": server.model,
        "prompt": ids,
        "max_tokens": 1,
        "prompt_logprobs": top_k,
        "temperature": 0.0,  # the one generated token is thrown away: greedy, no sampling work
    }


def server_message(resp: httpx.Response) -> str:
    """The error text of a server answer (vLLM: ``{"error": {"message": ...}}``), one line."""
    try:
        data = resp.json()
        err = data.get("error", data) if isinstance(data, dict) else data
        text = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        text = resp.text
    text = " ".join(str(text).split())
    return text[:300] or resp.reason_phrase


def response_logprobs(
    payload: Any, ids: list[int], n: int, who: str, choice: int = 0
) -> list[float]:
    """The last ``n`` positions' log-probs of prompt ``choice`` from a completions answer.

    ``choices[k]`` answers the k-th prompt (its ``index`` is k); its ``prompt_logprobs[j]`` maps
    token ids (as strings) to ``{"logprob", ...}`` for position j: the log-prob of ``ids[j]``
    given ``ids[:j]`` (position 0 is null).
    """
    try:
        found = [c for c in payload["choices"] if c.get("index", 0) == choice]
        plp = found[0]["prompt_logprobs"]
        values = [plp[j][str(ids[j])]["logprob"] for j in range(len(ids) - n, len(ids))]
    except (KeyError, IndexError, TypeError) as e:
        raise ModelError(
            f"{who}: the answer has no prompt_logprobs for the sent tokens ({type(e).__name__}: "
            f"{e}); is it a vLLM server?"
        ) from None
    return [-math.inf if v == _NEG_INF_SENTINEL else float(v) for v in values]


@dataclass(frozen=True)
class TopK:
    """A served teacher's answer at T response positions: its ``k`` most likely tokens
    (``ids_TK``, ``logprobs_TK``, in the server's rank order: log-probs non-increasing) and the
    log-prob of the response's own token at each position (``token_T``)."""

    ids_TK: torch.Tensor
    logprobs_TK: torch.Tensor
    token_T: torch.Tensor
    bytes: int = 0  # of the answer this response came in, its share by positions (the logs)


def response_top_k(
    payload: Any,
    ids: list[int],
    n: int,
    k: int,
    vocab_size: int,
    who: str,
    choice: int = 0,
    row: int = 0,
) -> TopK:
    """The last ``n`` positions of prompt ``choice``: each one's top ``k`` and own token.

    vLLM's ``prompt_logprobs[j]`` maps token ids to ``{"logprob", "rank", ...}``: the ``k`` of
    rank 1..k, plus the position's own token with its rank (which may be beyond k). Refused,
    each as one :class:`ModelError` naming the teacher, the response (``row``) and the
    position: fewer than ``k`` entries of rank ≤ k (or two of one rank: a duplicate), an id
    outside the vocabulary, a log-prob that is not finite, ranks whose log-probs increase.
    """
    try:
        found = [c for c in payload["choices"] if c.get("index", 0) == choice]
        plp = found[0]["prompt_logprobs"]
        rows = [plp[j] for j in range(len(ids) - n, len(ids))]
    except (KeyError, IndexError, TypeError) as e:
        raise ModelError(
            f"{who}: the answer has no prompt_logprobs for the sent tokens ({type(e).__name__}: "
            f"{e}); is it a vLLM server?"
        ) from None
    top_ids, top_lp, own = [], [], []
    for t, entries in enumerate(rows):
        where = f"{who}, response {row}, position {t}"
        try:
            mine = _finite(entries[str(ids[len(ids) - n + t])]["logprob"], where)
            ranked = sorted(
                (int(e["rank"]), int(tok), _finite(e["logprob"], where))
                for tok, e in entries.items()
                if e.get("rank") is not None and int(e["rank"]) <= k
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ModelError(f"{where}: a malformed log-prob entry ({type(e).__name__}: {e})")
        if [r for r, _, _ in ranked] != list(range(1, k + 1)):
            raise ModelError(
                f"{where}: {len(ranked)} entries of rank ≤ {k}, ranks "
                f"{[r for r, _, _ in ranked]}; need ranks 1..{k} once each (is the server's "
                f"--max-logprobs at least {k}?)"
            )
        bad = [tok for _, tok, _ in ranked if not 0 <= tok < vocab_size]
        if bad:
            raise ModelError(f"{where}: token id {bad[0]} is outside the vocabulary ({vocab_size})")
        values = [lp for _, _, lp in ranked]
        if any(b > a for a, b in zip(values, values[1:])):
            raise ModelError(f"{where}: the top {k} is not sorted by log-prob: {values}")
        top_ids.append([tok for _, tok, _ in ranked])
        top_lp.append(values)
        own.append(mine)
    return TopK(
        torch.tensor(top_ids, dtype=torch.long).reshape(n, k),
        torch.tensor(top_lp, dtype=torch.float32).reshape(n, k),
        torch.tensor(own, dtype=torch.float32),
    )


def _finite(value: Any, where: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v == _NEG_INF_SENTINEL:
        raise ModelError(f"{where}: a log-prob that is not finite ({value})")
    return v


# --------------------------------------------------------------------------- start-time checks
async def _get(
    client: httpx.AsyncClient,
    teacher: ServedTeacher,
    server: _Server,
    path: str,
    body: dict | None = None,
) -> Any:
    """GET (``body`` None) or POST one start-time request; one clear line on any failure."""
    url = f"{server.url}{path}"
    try:
        resp = await (client.get(url) if body is None else client.post(url, json=body))
    except httpx.TransportError as e:
        raise ModelError(
            f"served teacher {teacher.name!r}: cannot reach {server.url} ({type(e).__name__}: "
            f"{e}); start it (tcopd serve-teacher MODEL --port PORT) or fix the URL"
        ) from None
    if resp.status_code >= 400:
        raise ModelError(
            f"served teacher {teacher.name!r} at {server.url}: {path} answered HTTP "
            f"{resp.status_code}: {server_message(resp)}"
        )
    return _json(resp, f"served teacher {teacher.name!r} at {server.url}{path}")


def _json(resp: httpx.Response, who: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ModelError(f"{who}: the answer is not JSON ({resp.text[:120]!r})") from None


async def _check_server(
    client: httpx.AsyncClient,
    teacher: ServedTeacher,
    server: _Server,
    tokenizer: Any,
    need_tokens: int,
    top_k: int = 0,
) -> None:
    who = f"served teacher {teacher.name!r} at {server.url}"
    models = await _get(client, teacher, server, "/v1/models")
    try:
        info = models["data"][0]
        server.model, server.root = str(info["id"]), str(info.get("root") or info["id"])
        server.max_model_len = int(info.get("max_model_len") or 0)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ModelError(f"{who}: /v1/models lists no model; is it a vLLM server?") from None
    probe = probe_text(tokenizer)
    got = await _get(
        client, teacher, server, "/tokenize",
        {"model": server.model, "prompt": probe, "add_special_tokens": False},
    )  # fmt: skip
    want = tokenizer(probe, add_special_tokens=False)["input_ids"]
    check_probe_ids(want, list(got.get("tokens", [])), who)
    await _check_vocabulary(client, teacher, server, tokenizer, who)
    if server.max_model_len and server.max_model_len < need_tokens + 1:
        raise ConfigError(
            f"{who}: max_model_len {server.max_model_len} < {need_tokens + 1} (the longest "
            f"prompt + response, {need_tokens}, plus the one generated token); serve with "
            "--max-model-len at least that, or lower max_prompt_tokens / max_response_tokens"
        )
    ids = want[: max(2, min(len(want), 16))]
    payload = await _get(client, teacher, server, "/v1/completions", _body(server, [ids]))
    values = response_logprobs(payload, ids, len(ids) - 1, who)
    if not all(math.isfinite(v) for v in values):
        raise ModelError(f"{who}: the probe's log-probs are not finite ({values[:4]}...)")
    if top_k:
        try:
            await _get(client, teacher, server, "/v1/completions", _body(server, [ids], top_k))
        except ModelError as e:
            what = "whole rows" if top_k == -1 else f"each position's top {top_k}"
            need = "-1" if top_k == -1 else f"{top_k} or more"
            raise ConfigError(
                f"{who} does not give {what} ({e}); restart it with --max-logprobs {need} "
                f"(tcopd serve-teacher --max-logprobs {top_k}), or lower --served-top-k"
            ) from None


async def _check_vocabulary(
    client: httpx.AsyncClient, teacher: ServedTeacher, server: _Server, tokenizer: Any, who: str
) -> None:
    """The student's last token id decodes as the student's does, and one past it decodes as
    it does for the student (to nothing; a server that refuses the id agrees too): the
    vocabularies have the same size."""
    for token in (len(tokenizer) - 1, len(tokenizer)):
        body = {"model": server.model, "tokens": [token]}
        if token == len(tokenizer):
            try:
                resp = await client.post(f"{server.url}/detokenize", json=body)
            except httpx.TransportError as e:
                raise ModelError(
                    f"{who}: cannot reach {server.url} ({type(e).__name__}: {e})"
                ) from None
            if 400 <= resp.status_code < 500:
                continue  # out of the server's vocabulary too
        got = (await _get(client, teacher, server, "/detokenize", body)).get("prompt")
        options = {tokenizer.decode([token]), tokenizer.decode([token], skip_special_tokens=True)}
        if got not in options:
            raise ModelError(
                f"{who}: tokenizer differs from the student's: vocabulary (token {token} decodes "
                f"to {got!r}, the student's to {sorted(options)[0]!r}; the student has "
                f"{len(tokenizer)} tokens); serve a model with the student's tokenizer"
            )


def probe_text(tokenizer: Any) -> str:
    """The tokenizer check's text: :data:`PROBE_TEXT` and every special token of the student."""
    specials = [str(t) for t in getattr(tokenizer, "all_special_tokens", []) or []]
    return " ".join([PROBE_TEXT, *sorted(set(specials))])


def check_probe_ids(want: list[int], got: list[int], who: str) -> None:
    """The server's ids of the probe text equal the student's, else name the first difference."""
    if want == got:
        return
    pos = next((i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b),
               min(len(want), len(got)))  # fmt: skip
    a = want[pos] if pos < len(want) else "end"
    b = got[pos] if pos < len(got) else "end"
    raise ModelError(
        f"{who}: tokenizer differs from the student's: probe text token {pos} is {b} vs {a}; "
        "serve a model with the student's tokenizer"
    )


def _client(settings: ServerSettings, n_requests: int) -> httpx.AsyncClient:
    timeout = httpx.Timeout(settings.timeout_s, connect=min(10.0, settings.timeout_s))
    limits = httpx.Limits(
        max_connections=max(8, min(n_requests, 256)), max_keepalive_connections=64
    )
    return httpx.AsyncClient(timeout=timeout, limits=limits)


def connect(
    teachers: Mapping[str, ServedTeacher], tokenizer: Any, need_tokens: int, top_k: int = 0
) -> None:
    """Check every server of every teacher (concurrently); see the module docstring.
    ``top_k`` (the dense loss): each server must also answer ``prompt_logprobs=top_k``."""
    if not teachers:
        return

    async def run() -> None:
        first = next(iter(teachers.values()))
        async with _client(first.settings, 16) as client:
            await asyncio.gather(*(
                _check_server(client, t, s, tokenizer, need_tokens, top_k)
                for t in teachers.values() for s in t.servers
            ))  # fmt: skip

    asyncio.run(run())


def score_all(
    teachers: Mapping[str, ServedTeacher],
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    prompts_of: Mapping[str, Sequence[list[int]]] | None = None,
    top_k: tuple[int, int] | None = None,
) -> dict[str, list[Any]]:
    """Every served teacher's log-probs of every response, all requests concurrent;
    ``prompts_of[name]``: a context teacher's own prompts (instead of ``prompts``).
    ``top_k = (k, vocab_size)``: each teacher's :class:`TopK` rows instead
    (:meth:`ServedTeacher.score_top_k`)."""
    if not teachers or not prompts:
        return {name: [] for name in teachers}
    return asyncio.run(_score_all(teachers, prompts, responses, prompts_of, top_k))


async def _score_all(
    teachers: Mapping[str, ServedTeacher],
    prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    prompts_of: Mapping[str, Sequence[list[int]]] | None = None,
    top_k: tuple[int, int] | None = None,
) -> dict[str, list[Any]]:
    if not teachers or not prompts:
        return {name: [] for name in teachers}
    own = prompts_of or {}
    first = next(iter(teachers.values()))

    def call(client: httpx.AsyncClient, name: str, t: ServedTeacher) -> Any:
        if top_k is None:
            return t.score(client, own.get(name, prompts), responses)
        return t.score_top_k(client, own.get(name, prompts), responses, *top_k)

    async with _client(first.settings, len(prompts) * len(teachers)) as client:
        results = await asyncio.gather(*(call(client, n, t) for n, t in teachers.items()))
    return dict(zip(teachers, results, strict=True))


class Background:
    """:func:`score_all` in a thread, so local models score while the servers answer.

    :meth:`result` waits for the answers (re-raising the thread's error); a caller that gives
    up before (its own scoring failed) calls :meth:`close`, which stops the thread's requests.
    As a context manager, leaving the block closes it (after :meth:`result`: nothing to do).
    """

    def __init__(
        self,
        teachers: Mapping[str, ServedTeacher],
        prompts: list,
        responses: list,
        prompts_of: Mapping[str, list] | None = None,
        top_k: tuple[int, int] | None = None,
    ):
        self._out: dict[str, list[Any]] = {}
        self._error: BaseException | None = None
        self._lock = threading.Lock()  # guards _closed, _loop and _task
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._thread = threading.Thread(
            target=self._run, args=(teachers, prompts, responses, prompts_of, top_k), daemon=True
        )
        self._thread.start()

    def _run(self, *args: Any) -> None:
        try:
            self._out = asyncio.run(self._main(*args))
        except BaseException as e:  # re-raised in the caller's thread by result()
            self._error = e

    async def _main(self, *args: Any) -> dict[str, list[Any]]:
        with self._lock:
            if self._closed:  # closed before the thread got here: send nothing
                raise asyncio.CancelledError
            self._loop, self._task = asyncio.get_running_loop(), asyncio.current_task()
        return await _score_all(*args)

    def result(self) -> dict[str, list[Any]]:
        """Every served teacher's log-probs (see :func:`score_all`); waits for the thread."""
        self._thread.join()
        if self._error is not None:
            if self._closed and isinstance(self._error, asyncio.CancelledError):
                raise ModelError("served scoring was closed before its result was read")
            raise self._error
        return self._out

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel the thread's requests (those sent are dropped, no more are sent) and wait up
        to ``timeout_s`` seconds for it to end. Idempotent; nothing to do once the thread has
        ended (after :meth:`result`, say); never raises the thread's error."""
        with self._lock:
            self._closed = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the work has ended
                pass
        self._thread.join(timeout_s)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------ the server side
def server_command(
    model: str,
    port: int,
    host: str = "0.0.0.0",
    dtype: str = "auto",
    max_model_len: int | None = None,
    python: str | None = None,
    extra: Sequence[str] = (),
    max_logprobs: int = 64,
) -> list[str]:
    """The command line of a vLLM server fit to score teachers.

    ``--max-logprobs`` (default 64): log-prob scoring asks for ``prompt_logprobs=0`` (the
    prompt's own token), the dense loss for each position's top ``--served-top-k`` (16 by
    default, at most this); ``-1`` allows whole rows (the dense loss's exact mode, for small
    vocabularies). ``--no-enable-log-requests`` (vLLM ≥ 0.11; request logging
    is off by default there, said explicitly) and ``--disable-uvicorn-access-log``: prompts are
    training data, not log lines. ``extra`` comes last, so the user's flags win.
    """
    cmd = [python or sys.executable, "-m", VLLM_MODULE, "--model", model]
    cmd += ["--host", host, "--port", str(port), "--dtype", dtype]
    cmd += ["--max-logprobs", str(max_logprobs)]
    if max_model_len:
        cmd += ["--max-model-len", str(max_model_len)]
    cmd += ["--no-enable-log-requests", "--disable-uvicorn-access-log"]
    return cmd + list(extra)


CPU_KV_CACHE_GB = 4  # what serve-teacher gives vLLM's KV cache on CPU unless told otherwise


def server_env(environ: Mapping[str, str], cuda: bool) -> dict[str, str]:
    """The server's environment: ``environ``, plus ``VLLM_CPU_KVCACHE_SPACE`` (GiB) on a
    machine without CUDA when it is unset — vLLM's CPU build otherwise sizes its KV cache to
    ~90 % of the machine's memory (measured: 21 of 23.5 GiB), leaving the trainer beside it
    swapping. Scoring needs little: one batch's prompts and responses at a time."""
    env = dict(environ)
    if not cuda and "VLLM_CPU_KVCACHE_SPACE" not in env:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(CPU_KV_CACHE_GB)
    return env


def check_server_python(python: str) -> None:
    """Refuse a Python in which vLLM cannot be imported (it runs the server)."""
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        ok = subprocess.run([python, "-c", probe], capture_output=True).returncode == 0
    except OSError as e:
        raise ConfigError(f"cannot run {python} ({e}): pass --python /path/to/venv/bin/python")
    if not ok:
        raise ConfigError(
            f"vLLM is not installed for {python}: pip install vllm there, or pass --python with "
            "the interpreter of a venv that has it"
        )


def check_port_free(host: str, port: int) -> None:
    """Refuse a port that something already listens on (the server would die after loading)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # as the server will (uvicorn): a just-closed server's TIME_WAIT does not block the port
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("" if host in ("0.0.0.0", "") else host, port))
        except OSError as e:
            raise ConfigError(f"port {port} on {host} is taken ({e.strerror}): pick another --port")


def public_url(host: str, port: int) -> str:
    """The URL other machines use: this machine's hostname when bound to every interface."""
    name = socket.gethostname() if host in ("0.0.0.0", "::", "") else host
    return f"http://{name}:{port}"


def wait_until_ready(url: str, process: subprocess.Popen, timeout_s: float = 900.0) -> float:
    """Poll ``url``/v1/models until the server answers; seconds waited. Stops with a
    :class:`ModelError` if the process exits first or ``timeout_s`` passes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if process.poll() is not None:
            raise ModelError(
                f"the vLLM server exited with code {process.returncode} before answering "
                "(its log is above)"
            )
        try:
            if httpx.get(f"{url}/v1/models", timeout=2.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(1.0)
    raise ModelError(f"the vLLM server at {url} did not answer within {timeout_s:.0f} s")
