"""Serving under adversarial requests: one bad request never fails the others, each request's
cost is bounded, client mistakes are 4xx, metric labels stay bounded, and everything `pajama
serve` starts listens on loopback only.

One real `pajama serve --model chat=DIR` subprocess (its own local Ray, started by
`pajama.cluster.init_ray`) serves the module over HTTP; every attack is sent together with
well-formed requests, which must still succeed. The tests without Ray (engine rows, stop matching,
redaction, refusals) come first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import httpx
import psutil
import pytest
from pajama.serve.engine import HFEngine
from pajama.serve.rows import Job, Sampling, StopMatcher
from pajama.serve.events import Failed, Finished
from pajama.serve.tiny_model import make_tiny_model

from conftest import REPO, free_port

API_KEY = "sk-pajama-hardening"
MODEL = "chat"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
HELLO = [{"role": "user", "content": "Hello, who are you?"}]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("hardening-model"), suppress_eos=True)


# ----------------------------------------------------------------------------------------------
# Without Ray


def test_a_row_that_cannot_sample_fails_alone(model_dir):
    from pajama.models import resolve_source

    engine = HFEngine(resolve_source(str(model_dir)))
    ids = engine.tokenizer("The capital of", add_special_tokens=False)["input_ids"]

    def job(**sampling):
        return Job(ids, Sampling(max_tokens=6, **sampling), (), strip_leading_space=False, stream=False)

    async def run(jobs):
        last = [None] * len(jobs)
        for index, job in enumerate(jobs):
            job.index = index
        async for step in engine.generate(jobs):
            for event in step:
                last[event.index] = dataclasses.replace(event, index=0)  # comparable across batches
        return last

    greedy, sampled = asyncio.run(run([job(temperature=0), job(temperature=1.0, seed=7)]))
    # A seed beyond 64 bits (the schema refuses it; the engine must still survive it) and a
    # temperature that would overflow (served greedily), batched with good rows.
    bad, tiny, good_greedy, good_sampled = asyncio.run(run(
        [job(temperature=1.0, seed=2**70), job(temperature=1e-300), job(temperature=0), job(temperature=1.0, seed=7)]
    ))
    assert isinstance(bad, Failed) and "overflow" in bad.message.lower(), bad
    assert good_greedy == greedy and good_sampled == sampled and isinstance(greedy, Finished)
    assert tiny == greedy


def _naive_stop(text: str, stops: tuple[str, ...]) -> tuple[int | None, int]:
    """The first completed stop (by end, then start) and the held-back length, the slow way."""
    for end in range(1, len(text) + 1):
        starts = [end - len(s) for s in stops if text[:end].endswith(s)]
        if starts:
            return min(starts), 0
    partial = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return None, partial


def test_stop_matching_agrees_with_a_naive_search_and_reads_each_character_once():
    import random

    rng = random.Random(0)
    for _ in range(300):
        stops = tuple("".join(rng.choice("ab") for _ in range(rng.randint(1, 5))) for _ in range(rng.randint(1, 4)))
        text = "".join(rng.choice("abc") for _ in range(rng.randint(0, 30)))
        matcher, found = StopMatcher(stops), None
        for end in range(0, len(text) + 1, 3):  # fed in pieces, as tokens arrive
            found = matcher.feed(text, min(end, len(text)))
            if found is not None:
                break
        if found is None:
            found = matcher.feed(text, len(text))
        expected, partial = _naive_stop(text, stops)
        assert found == expected, (stops, text)
        if found is None:
            assert matcher.partial() == partial, (stops, text)
    # Four stop sequences of the maximum length against a long text that keeps almost matching:
    # the work is linear in the text (about 20k steps here), not text x stop length.
    stops = tuple("a" * 255 + c for c in "bcde")
    matcher = StopMatcher(stops)
    started = time.perf_counter()
    text = ""
    for _ in range(5000):
        text += "a"
        assert matcher.feed(text, len(text)) is None
    assert matcher.partial() == 255
    assert time.perf_counter() - started < 2.0


def test_credentials_never_reach_recorded_app_args():
    from pajama.redact import redact_uri
    from pajama.serve.stage import recorded_args

    args = {"models": [{"name": "chat", "source": "models:/pajama-chat/3", "kind": "chat"},
                       {"name": "x", "source": "https://u:pw@host/m?X-Amz-Signature=s1&v=1", "kind": "base"}],
            "tracking_uri": "https://alice:s3cret@mlflow.example.com/?token=t0k&sig=zz"}
    recorded = json.dumps(recorded_args(args))
    for secret in ("alice", "s3cret", "t0k", "zz", "pw", "s1"):
        assert secret not in recorded
    assert "mlflow.example.com" in recorded and "models:/pajama-chat/3" in recorded
    assert args["tracking_uri"].startswith("https://alice:")  # the app itself keeps the real URI
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_serving_beyond_loopback_without_a_key_is_refused(model_dir, monkeypatch):
    import ray
    from pajama.serve import app

    monkeypatch.delenv("PAJAMA_API_KEY", raising=False)
    args = {"models": [{"name": MODEL, "source": str(model_dir), "kind": "chat"}]}
    for host in ("0.0.0.0", "192.0.2.1", "example.com"):
        with pytest.raises(ValueError, match="without an API key"):
            app.deploy(args, host=host, port=free_port())
    assert not ray.is_initialized()  # refused before anything started


# ----------------------------------------------------------------------------------------------
# Against a running `pajama serve`


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    storage = tmp_path_factory.mktemp("hardening-storage")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(PAJAMA_STORAGE_URI=str(storage), PAJAMA_API_KEY=API_KEY, PYTHONUNBUFFERED="1",
               RAY_metrics_report_interval_ms="1000")  # metrics reach the endpoint within a second
    log_path = storage / "pajama-serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "pajama", "serve", "--model", f"{MODEL}={model_dir}", "--port", str(port)],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 300
        while True:
            assert proc.poll() is None and time.time() < deadline, log_path.read_text()[-4000:]
            with contextlib.suppress(httpx.HTTPError):
                if _post(base_url, COMPLETIONS, {"model": MODEL, "prompt": "Hi", "max_tokens": 1}).status_code == 200:
                    break
            time.sleep(2)
        yield SimpleNamespace(base_url=base_url, port=port, proc=proc, log=log_path)
    finally:
        proc.send_signal(signal.SIGINT)  # serve_forever shuts Serve down on Ctrl-C
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Ray processes left in the session
        log.close()


def _headers(content_type: str | None = "application/json") -> dict:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def _post(base_url, path, body, content_type="application/json"):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{base_url}{path}", content=content, headers=_headers(content_type), timeout=120)


def _good_requests():
    return [
        (COMPLETIONS, {"model": MODEL, "prompt": "The capital of", "max_tokens": 8, "temperature": 0}),
        (COMPLETIONS, {"model": MODEL, "prompt": "Once", "max_tokens": 8, "temperature": 1.0, "seed": 3}),
        (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0, "stream": True}),
        (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": 8, "temperature": 0.7, "stream": True}),
        (COMPLETIONS, {"model": MODEL, "prompt": "Hello", "max_tokens": 8, "stream": True}),
    ]


async def _send(http: httpx.AsyncClient, base_url: str, path: str, body, content_type="application/json"):
    """(status, parsed result, seconds): a JSON body, or for a stream its SSE payloads."""
    content = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    started = time.monotonic()
    response = await http.post(f"{base_url}{path}", content=content, headers=_headers(content_type))
    seconds = time.monotonic() - started
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line[len("data: "):] for line in response.text.split("\n\n") if line]
        return response.status_code, events, seconds
    return response.status_code, response.json(), seconds


def _assert_succeeded(result, body):
    status, payload, _ = result
    assert status == 200, payload
    if isinstance(payload, list):  # a stream: complete, without an in-band error
        assert payload[-1] == "[DONE]" and not any('"error"' in event for event in payload), payload
        finish = [json.loads(e)["choices"][0]["finish_reason"] for e in payload[:-1] if json.loads(e)["choices"]]
        # Sampled replies may end at the chat format's turn stop before their budget: both are success.
        assert finish[-1] in ("length", "stop"), finish
    else:
        assert payload["usage"]["completion_tokens"] == body["max_tokens"]


async def _together(base_url: str, bad: list[tuple], good: list[tuple] | None = None):
    """Send the bad requests and the good ones at once; return (bad results, good results)."""
    good = good if good is not None else _good_requests()
    async with httpx.AsyncClient(timeout=120) as http:
        results = await asyncio.gather(
            *(_send(http, base_url, *request) for request in bad), *(_send(http, base_url, *request) for request in good)
        )
    for result, (_, body) in zip(results[len(bad):], good):
        _assert_succeeded(result, body)
    return results[: len(bad)], results[len(bad):]


def test_bad_parameters_in_a_batch_fail_alone(served):
    greedy = _post(served.base_url, COMPLETIONS, {"model": MODEL, "prompt": "The capital of", "max_tokens": 8, "temperature": 0})
    bad = [
        (COMPLETIONS, {"model": MODEL, "prompt": "a", "max_tokens": 8, "seed": 2**64}),
        (COMPLETIONS, {"model": MODEL, "prompt": "a", "max_tokens": 8, "seed": -(2**63) - 1}),
        (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": 8, "seed": 10**30, "stream": True}),
        (COMPLETIONS, b'{"model": "chat", "prompt": "a", "temperature": NaN}'),
        (COMPLETIONS, b'{"model": "chat", "prompt": "a", "top_p": Infinity}'),
    ]
    # Served, not refused: a temperature that would overflow is greedy, a vanishing top_p keeps one token.
    odd = [
        (COMPLETIONS, {"model": MODEL, "prompt": "The capital of", "max_tokens": 8, "temperature": 1e-300}),
        (COMPLETIONS, {"model": MODEL, "prompt": "The capital of", "max_tokens": 8, "temperature": 1.0, "top_p": 1e-300}),
        (COMPLETIONS, {"model": MODEL, "prompt": "The capital of", "max_tokens": 8, "temperature": 1.0, "seed": 2**64 - 1}),
    ]
    bad_results, good_results = asyncio.run(_together(served.base_url, bad, _good_requests() + odd))
    for (status, payload, _), request in zip(bad_results, bad):
        assert status == 400 and payload["error"]["code"] in ("invalid_value", "invalid_json"), (request, payload)
    tiny_temperature, tiny_top_p = good_results[-3][1], good_results[-2][1]
    assert tiny_temperature["choices"][0]["text"] == greedy.json()["choices"][0]["text"]
    assert tiny_top_p["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


def test_a_20_mb_body_is_refused_at_once_without_delaying_others(served):
    huge = json.dumps({"model": MODEL, "prompt": "x" * (20 << 20)}).encode()

    async def chunks():  # no Content-Length: the limit must hold while reading
        for start in range(0, len(huge), 1 << 20):
            yield huge[start : start + (1 << 20)]

    async def attack():
        async with httpx.AsyncClient(timeout=120) as http:
            probe = _send(http, served.base_url, COMPLETIONS, {"model": MODEL, "prompt": "Hi", "max_tokens": 8, "temperature": 0})
            alone = (await probe)[2]
            started = time.monotonic()
            declared, streamed, beside = await asyncio.gather(
                _send(http, served.base_url, COMPLETIONS, huge),
                http.post(f"{served.base_url}{COMPLETIONS}", content=chunks(), headers=_headers()),
                _send(http, served.base_url, COMPLETIONS, {"model": MODEL, "prompt": "Hi", "max_tokens": 8, "temperature": 0}),
            )
            return alone, declared, streamed, beside, time.monotonic() - started

    alone, declared, streamed, beside, _ = asyncio.run(attack())
    assert declared[0] == 413 and declared[1]["error"]["code"] == "request_too_large"
    assert declared[2] < 1.0, f"the 20 MB body took {declared[2]:.2f} s to refuse"
    assert streamed.status_code == 413
    _assert_succeeded(beside, {"max_tokens": 8})
    assert beside[2] < alone + 1.0, f"a concurrent request took {beside[2]:.2f} s (alone {alone:.2f} s)"
    # Under the body limit but over the prompt limit: refused before tokenizing.
    long_prompt = _post(served.base_url, COMPLETIONS, {"model": MODEL, "prompt": "x " * 200_000})
    assert long_prompt.status_code == 400 and long_prompt.json()["error"]["code"] == "context_length_exceeded"


def test_client_mistakes_are_4xx_while_others_are_served(served):
    surrogate = b'{"model": "chat", "messages": [{"role": "user", "content": "hi \\ud800 there"}], "max_tokens": 4}'
    bad = [
        (CHAT, {"model": MODEL, "messages": HELLO, "stop": [f"s{i}" for i in range(50)]}),
        (CHAT, {"model": MODEL, "messages": HELLO, "stop": "x" * 100_000}),
        (CHAT, surrogate),
        (COMPLETIONS, b'{"model": "chat", "prompt": "\\udfff"}'),
        (COMPLETIONS, b'{"model": "chat", "prompt": "\xff\xfe"}'),  # not UTF-8
        (COMPLETIONS, b"[" * 100_000 + b"]" * 100_000),
        (CHAT, {"model": MODEL, "messages": HELLO}, "text/plain"),
        (CHAT, {"model": MODEL, "messages": HELLO}, "application/x-www-form-urlencoded"),
        (COMPLETIONS, {"model": MODEL, "prompt": "Hi"}, None),
    ]
    expected = [400, 400, 400, 400, 400, 400, 415, 415, 415]
    bad_results, _ = asyncio.run(_together(served.base_url, bad))
    for (status, payload, _), want, request in zip(bad_results, expected, bad):
        assert status == want and set(payload["error"]) == {"message", "type", "param", "code"}, (request[1], payload)


def _descendants(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _listening(pid: int) -> list[tuple[str, str, int]]:
    sockets = []
    for process in _descendants(pid):
        with contextlib.suppress(psutil.Error):
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    sockets.append((process.name(), conn.laddr.ip, conn.laddr.port))
    return sockets


def _metrics_page(pid: int) -> tuple[str, str]:
    """(URL, text) of the Prometheus endpoint of the Ray node `pajama serve` started."""
    for name, _, port in _listening(pid):
        if "DashboardAgent" in name:
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
                if response.status_code == 200 and "# HELP" in response.text:
                    return response.url, response.text
    raise AssertionError(f"no metrics endpoint among {_listening(pid)}")


def _pajama_series(page: str) -> set[str]:
    """Pajama's series on a metrics page: each name with its labels, without its value."""
    return {line.rsplit(" ", 1)[0] for line in page.splitlines() if line.startswith("ray_pajama_serve_")}


def _requests_from_unknown(page: str) -> float:
    lines = [line for line in page.splitlines() if line.startswith("ray_pajama_serve_requests") and 'model="unknown"' in line]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_unknown_model_names_never_become_metric_labels(served):
    def wait_for_unknown(count: int) -> str:
        deadline = time.time() + 30
        while True:
            _, page = _metrics_page(served.proc.pid)
            if _requests_from_unknown(page) >= count or time.time() > deadline:
                return page
            time.sleep(0.5)

    first = _post(served.base_url, CHAT, {"model": "nope-0", "messages": HELLO})
    assert first.status_code == 404
    before = wait_for_unknown(1)
    assert _requests_from_unknown(before) >= 1, "the request counter never reached the metrics endpoint"
    baseline = _requests_from_unknown(before)
    names = [f"attacker-{uuid.uuid4().hex}" for _ in range(1000)]

    async def flood():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=32)) as http:
            return await asyncio.gather(*(
                _send(http, served.base_url, CHAT, {"model": name, "messages": HELLO}) for name in names
            ))

    started = time.monotonic()
    assert {status for status, _, _ in asyncio.run(flood())} == {404}
    print(f"1,000 unknown-model requests in {time.monotonic() - started:.1f} s")
    after = wait_for_unknown(baseline + 1000)
    assert _requests_from_unknown(after) >= baseline + 1000
    assert not any(name in after for name in names)
    # Pajama's series only changed their counts. A late export of the first 404's histogram may add
    # one series per bucket; 1,000 new label values would add at least 1,000 series.
    new_series = _pajama_series(after) - _pajama_series(before)
    assert len(new_series) < 50, sorted(new_series)[:5]


def test_everything_pajama_serve_started_listens_on_loopback_only(served):
    sockets = _listening(served.proc.pid)
    names = {name for name, _, _ in sockets}
    # Not vacuous: Ray's GCS and raylet, and Serve's HTTP proxy, are among them.
    assert {"gcs_server", "raylet"} <= names and any(port == served.port for _, _, port in sockets), sockets
    exposed = [s for s in sockets if s[1] not in LOOPBACK]
    assert not exposed, f"listening beyond loopback: {exposed}"
