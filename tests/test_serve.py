"""The Serve app end to end on loopback: the official `openai` client, streaming, errors, auth,
provenance, the playground in headless Chromium, load, and a replica killed under load.

One Ray + Serve instance serves the whole module (Serve start is slow on 2 cores); the tests that
disturb it (the replica kill) run last.
"""

import asyncio
import json
import os
import shutil
import subprocess
import time
from types import SimpleNamespace

import httpx
import openai
import pytest
import ray
from pajama.serve import app as serve_app
from pajama.serve.engine import HANG_ON_ENV
from pajama.serve.tiny_model import make_tiny_model

from conftest import free_port

API_KEY = "sk-pajama-test"
KEY_ENV = "PAJAMA_TEST_SERVE_API_KEY"
MODEL = "chat"
HELLO = [{"role": "user", "content": "Hello, who are you?"}]
HANG_MARKER = "please hang the generation thread"  # the engine's test hook (PAJAMA_TEST_HANG_ON)
BODY_TIMEOUT_S = 5


def running_server(tmp_path_factory, ray_env: dict[str, str]):
    """Serve the tiny chat model on loopback; `ray_env`: more of the local Ray's environment."""
    model_dir = make_tiny_model(tmp_path_factory.mktemp("serve-model"), suppress_eos=True)
    # Set before ray.init so the replicas (children of the raylet) inherit them.
    env = {KEY_ENV: API_KEY, HANG_ON_ENV: HANG_MARKER, **ray_env}
    os.environ.update(env)
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        base_url = serve_app.deploy(
            {
                "models": [{"name": MODEL, "source": str(model_dir), "kind": "chat"}],
                "api_key_env": KEY_ENV,
                "num_cpus": 1,
                "num_gpus": 0,
                "stall_timeout_s": 3,
                "request_body_timeout_s": BODY_TIMEOUT_S,
                "default_max_tokens": 16,
                "health_check_period_s": 1,
            },
            port=free_port(),
        )
        yield SimpleNamespace(base_url=base_url, model_dir=model_dir)
    finally:
        serve_app.shutdown()
        ray.shutdown()
        for name in env:
            del os.environ[name]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Behind Ray's proxy actor, as `pajama serve` runs locally (test_serve_haproxy.py: HAProxy)."""
    yield from running_server(tmp_path_factory, {})


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def _post(server, path, body, key=API_KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
    return httpx.post(f"{server.base_url}{path}", content=content, headers=headers, timeout=120)


def _prompt_tokens(server, messages):
    from pajama.sft.templates import render_chat
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    text = render_chat(messages, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# ----------------------------------------------------------------------------------------------
# The OpenAI API through the official client


def test_models_lists_the_served_model_with_provenance(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    info = models[0].model_extra["pajama"]
    assert info["kind"] == "chat" and info["version"].startswith("sha256-") and info["run_id"] is None
    assert info["context_length"] == 256


def test_chat_completion(server, client):
    response = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert response.object == "chat.completion" and response.id.startswith("chatcmpl-")
    assert response.model == MODEL
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert response.usage.completion_tokens == 8
    assert response.usage.prompt_tokens == _prompt_tokens(server, HELLO)
    assert response.usage.total_tokens == response.usage.prompt_tokens + 8
    # Greedy decoding is deterministic: the same request gives the same answer.
    again = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=8, temperature=0)
    assert again.choices[0].message.content == choice.message.content


def test_completion_and_stop_sequence(client):
    full = client.completions.create(model=MODEL, prompt="The capital of", max_tokens=16, temperature=0)
    assert full.object == "text_completion" and full.choices[0].finish_reason == "length"
    text = full.choices[0].text
    assert full.usage.completion_tokens == 16 and len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = client.completions.create(model=MODEL, prompt="The capital of", max_tokens=16, temperature=0, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        return client.completions.create(
            model=MODEL, prompt="Once", max_tokens=10, temperature=1.0, top_p=0.95, seed=seed
        ).choices[0].text

    assert sample(11) == sample(11)


def test_streaming_chat_matches_the_plain_answer(client):
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HELLO, max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) >= 2, "the answer arrives in several chunks"
    assert "".join(content) == plain.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens


def test_streaming_completion_and_raw_event_stream(server, client):
    plain = client.completions.create(model=MODEL, prompt="Hello", max_tokens=10, temperature=0)
    streamed = client.completions.create(model=MODEL, prompt="Hello", max_tokens=10, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == plain.choices[0].text
    assert plain.choices[0].finish_reason == "length"  # greedy, the model says no EOS within 10 tokens
    # Greedy too: sampled at the default temperature 1, the test model ends with EOS now and then ("stop").
    raw = _post(server, "/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": 3, "stream": True,
                                            "temperature": 0})
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_provenance_headers_and_fingerprint(client):
    models = client.models.list().data
    version = models[0].model_extra["pajama"]["version"]
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=HELLO, max_tokens=2)
    assert raw.headers["x-pajama-model-version"] == version
    assert raw.headers["x-pajama-run-id"] == "none"
    assert raw.parse().system_fingerprint == f"{version}@local"
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=HELLO, max_tokens=2, stream=True
    ) as streaming:
        assert streaming.headers["x-pajama-model-version"] == version
        assert all(chunk.system_fingerprint == f"{version}@local" for chunk in streaming.parse())


def test_n_choices_with_logprobs_through_the_client(client):
    completion = client.completions.create(model=MODEL, prompt="The capital of", max_tokens=6, temperature=0, n=2, logprobs=2)
    assert [c.index for c in completion.choices] == [0, 1] and completion.usage.completion_tokens == 12
    first, second = completion.choices
    assert first.text == second.text  # greedy
    logprobs = first.logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.text_offset) == 6
    assert "".join(logprobs.tokens) == first.text and logprobs.text_offset[0] == 0
    # Greedy: the chosen token is the best of its alternatives (the chosen one included).
    assert all(lp == max(top.values()) and len(top) == 2 for lp, top in zip(logprobs.token_logprobs, logprobs.top_logprobs))

    chat = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=5, temperature=1.0, seed=3,
                                          n=2, logprobs=True, top_logprobs=3)
    assert [c.index for c in chat.choices] == [0, 1] and chat.usage.completion_tokens == 10
    for choice in chat.choices:
        content = choice.logprobs.content
        assert len(content) == 5 and all(len(token.top_logprobs) == 3 and token.logprob <= 0 for token in content)

    chunks = list(client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0, n=2,
                                                 stream=True, logprobs=True))
    texts = {0: "", 1: ""}
    streamed_logprobs = {0: 0, 1: 0}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            streamed_logprobs[choice.index] += len(choice.logprobs.content) if choice.logprobs else 0
    plain = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=6, temperature=0)
    assert texts == {0: plain.choices[0].message.content, 1: plain.choices[0].message.content}
    assert streamed_logprobs == {0: 6, 1: 6}
    finishes = [(c.index, c.finish_reason) for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(finishes) == [(0, "length"), (1, "length")]


def test_scoring_a_prompt_the_way_lm_evaluation_harness_does(server):
    """`local-completions` loglikelihood: token ids, echo, logprobs 1, max_tokens 0 or 1, greedy."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server.model_dir)
    prompts = [tokenizer("The capital of France is Paris", add_special_tokens=False)["input_ids"],
               tokenizer("Hello, who are you?", add_special_tokens=False)["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(server.model_dir).eval()
    for max_tokens in (0, 1):
        body = {"model": MODEL, "prompt": prompts, "max_tokens": max_tokens, "echo": True, "logprobs": 1,
                "temperature": 0, "seed": 1234}
        response = _post(server, COMPLETIONS, body)
        assert response.status_code == 200, response.text
        choices = sorted(response.json()["choices"], key=lambda c: c["index"])
        assert len(choices) == 2
        for ids, choice in zip(prompts, choices):
            logprobs = choice["logprobs"]
            assert len(logprobs["token_logprobs"]) == len(ids) + max_tokens
            assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
            assert logprobs["tokens"][: len(ids)] == [tokenizer.decode([i]) for i in ids]
            assert choice["text"].startswith(tokenizer.decode(ids))
            assert logprobs["text_offset"][1] == len(logprobs["tokens"][0])
            with torch.inference_mode():
                expected = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            expected = expected[torch.arange(len(ids) - 1), ids[1:]]
            served = torch.tensor(logprobs["token_logprobs"][1 : len(ids)])
            assert torch.allclose(served, expected, atol=1e-4), (served, expected)
            # lm-eval's is_greedy test reads the top alternatives of each continuation token.
            assert all(max(top.values()) >= lp - 1e-6 for lp, top in
                       zip(logprobs["token_logprobs"][1:], logprobs["top_logprobs"][1:]))


def test_openapi_schema_and_docs(server):
    schema = httpx.get(f"{server.base_url}/openapi.json").json()
    body = schema["paths"]["/v1/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/CompletionRequest"}
    assert "echo" in schema["components"]["schemas"]["CompletionRequest"]["properties"]
    assert "ChatMessage" in schema["components"]["schemas"]
    docs = httpx.get(f"{server.base_url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_a_request_joins_a_long_generation_through_serve(server):
    """A short request sent while a long one generates gets its first token before the long one ends."""

    async def main():
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=120) as http:
            async def stream(max_tokens: int, started: asyncio.Event) -> tuple[float, float]:
                body = {"model": MODEL, "prompt": "Once", "max_tokens": max_tokens, "temperature": 0, "stream": True}
                first = None
                async with http.stream("POST", f"{server.base_url}{COMPLETIONS}", json=body, headers=headers) as response:
                    async for line in response.aiter_lines():
                        if first is None and line.startswith("data: {"):
                            first = time.monotonic()
                            started.set()
                return first, time.monotonic()

            long_started = asyncio.Event()
            long_request = asyncio.create_task(stream(250, long_started))
            await long_started.wait()
            short_first, short_end = await stream(4, asyncio.Event())
            long_first, long_end = await long_request
            return long_first, long_end, short_first, short_end

    long_first, long_end, short_first, short_end = asyncio.run(main())
    assert long_first < short_first < short_end < long_end


# ----------------------------------------------------------------------------------------------
# Bad requests and auth


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MALFORMED = [
    ("bad json", CHAT, b'{"model": "chat", ', 400, "invalid_json", None),
    ("not an object", CHAT, [1, 2], 400, "invalid_json", None),
    ("unknown model", CHAT, {"model": "nope", "messages": HELLO}, 404, "model_not_found", "model"),
    ("negative max_tokens", CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": -1}, 400, "invalid_value", "max_tokens"),
    ("max_tokens as string", CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": "5"}, 400, "invalid_value", "max_tokens"),
    ("temperature wrong type", CHAT, {"model": MODEL, "messages": HELLO, "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ("temperature too high", CHAT, {"model": MODEL, "messages": HELLO, "temperature": 3}, 400, "invalid_value", "temperature"),
    ("missing messages", CHAT, {"model": MODEL}, 400, "invalid_value", "messages"),
    ("unknown role", CHAT, {"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, 400, "invalid_value", None),
    ("n=0", CHAT, {"model": MODEL, "messages": HELLO, "n": 0}, 400, "invalid_value", "n"),
    ("top_logprobs without logprobs", CHAT, {"model": MODEL, "messages": HELLO, "top_logprobs": 2}, 400, "invalid_value", None),
    ("max_tokens 0 without echo", COMPLETIONS, {"model": MODEL, "prompt": "Hi", "max_tokens": 0}, 400, "invalid_value", None),
    ("token id beyond the vocabulary", COMPLETIONS, {"model": MODEL, "prompt": [1, 10**6]}, 400, "invalid_value", "prompt"),
    ("unknown field", CHAT, {"model": MODEL, "messages": HELLO, "best_of_all": 1}, 400, "invalid_value", "best_of_all"),
    ("five stops", CHAT, {"model": MODEL, "messages": HELLO, "stop": list("abcde")}, 400, "invalid_value", "stop"),
    ("prompt beyond context", COMPLETIONS, {"model": MODEL, "prompt": "x " * 400}, 400, "context_length_exceeded", "prompt"),
    ("max_tokens beyond context", COMPLETIONS, {"model": MODEL, "prompt": "Hi", "max_tokens": 1000}, 400, "context_length_exceeded", "max_tokens"),
    ("too many choices", COMPLETIONS, {"model": MODEL, "prompt": ["a"] * 5, "n": 16}, 400, "invalid_value", None),
    ("penalty unsupported", COMPLETIONS, {"model": MODEL, "prompt": "a", "presence_penalty": 1.0}, 400, "invalid_value", "presence_penalty"),
    ("unknown route", "/v1/embeddings", {"model": MODEL, "input": "a"}, 404, "not_found", None),
]


@pytest.mark.parametrize("path,body,status,code,param", [case[1:] for case in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_request_is_a_4xx_with_an_openai_error_body(server, path, body, status, code, param):
    response = _post(server, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    # The replica is still serving.
    ok = _post(server, COMPLETIONS, {"model": MODEL, "prompt": "Hi", "max_tokens": 2, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2


def test_api_key_is_required_when_set(server):
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 2}
    missing = _post(server, CHAT, body, key=None)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    wrong = _post(server, CHAT, body, key="sk-wrong")
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    # Auth comes before parsing: a bad body without a key is still a 401.
    assert _post(server, CHAT, b"{", key=None).status_code == 401
    assert httpx.get(f"{server.base_url}/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="sk-wrong", max_retries=0).models.list()
    # Health and the playground page are open; the page asks for the key.
    assert httpx.get(f"{server.base_url}/healthz").json() == {"status": "ok", "models": [MODEL]}
    page = httpx.get(f"{server.base_url}/")
    assert page.status_code == 200 and 'id="api-key"' in page.text and "/v1/chat/completions" in page.text


def test_a_stalled_body_gets_408_without_holding_up_others(server):
    """A client that sends half its body and waits gets 408 once `request_body_timeout_s` has passed (Ray
    Serve's retry of a request whose body the first replica had read looks the same to the replica)."""
    host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
    body = json.dumps({"model": MODEL, "messages": HELLO, "max_tokens": 2}).encode()

    async def stalled():
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        writer.write(f"POST {CHAT} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {API_KEY}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=60)
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        payload = json.loads(await reader.readexactly(length))
        writer.close()
        return int(head.split(b" ")[1]), payload, time.monotonic() - started

    async def both():
        async with httpx.AsyncClient(timeout=60) as http:
            ok = http.post(f"{server.base_url}{CHAT}", json={"model": MODEL, "messages": HELLO, "max_tokens": 2},
                           headers={"Authorization": f"Bearer {API_KEY}"})
            return await asyncio.gather(stalled(), ok)

    (status, payload, seconds), ok = asyncio.run(both())
    assert status == 408 and payload["error"]["code"] == "request_timeout", payload
    assert BODY_TIMEOUT_S <= seconds < BODY_TIMEOUT_S + 20, seconds
    assert ok.status_code == 200


# ----------------------------------------------------------------------------------------------
# The playground in headless Chromium, driven over the DevTools protocol


def _chromium() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None)


class _DevTools:
    def __init__(self, websocket_url: str):
        from websockets.sync.client import connect

        self.socket = connect(websocket_url, max_size=None, open_timeout=30)
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # skip events until our reply
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                assert "error" not in message, message
                return message["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 90):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expression}")


@pytest.mark.skipif(_chromium() is None, reason="needs chromium (apt-get install -y chromium)")
def test_playground_streams_an_answer_in_headless_chromium(server, client, tmp_path):
    profile = tmp_path / "chromium-profile"
    browser = subprocess.Popen(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert browser.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.2)
        port = port_file.read_text().split()[0]
        pages = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        page = _DevTools(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])
        page.call("Page.navigate", url=f"{server.base_url}/")
        page.wait_for("document.readyState === 'complete' && !!document.getElementById('model')")
        page.evaluate(
            f"""(() => {{
                const key = document.getElementById('api-key');
                key.value = {json.dumps(API_KEY)};
                key.dispatchEvent(new Event('change'));
            }})()"""
        )
        page.wait_for("document.getElementById('model').dataset.state === 'loaded'")
        assert page.evaluate("document.getElementById('model').value") == MODEL
        page.evaluate(
            """(() => {
                document.getElementById('temperature').value = '0';
                document.getElementById('max-tokens').value = '12';
                document.getElementById('input').value = 'Hello, who are you?';
                document.getElementById('send').click();
            })()"""
        )
        state = page.wait_for(
            "(() => { const a = document.querySelector('.msg.assistant'); "
            "return a && a.dataset.state !== 'streaming' ? a.dataset.state : null; })()"
        )
        answer = page.evaluate(
            "(() => { const a = document.querySelector('.msg.assistant'); "
            "return {text: a.textContent, chunks: Number(a.dataset.chunks), "
            "note: a.nextElementSibling ? a.nextElementSibling.textContent : ''}; })()"
        )
        assert state == "done", answer
        expected = client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=12, temperature=0)
        assert answer["text"] == expected.choices[0].message.content
        assert answer["chunks"] >= 2, "the answer streamed in over several chunks"
        assert "sha256-" in answer["note"] and "finish: length" in answer["note"]
    finally:
        browser.terminate()
        browser.wait(timeout=30)


# ----------------------------------------------------------------------------------------------
# Load and failure (slow)


async def _fire(base_url: str, total: int, concurrency: int, on_progress=None) -> list[tuple[float, float, int]]:
    """Send `total` small chat requests, `concurrency` at a time; return (start, end, status) each."""
    results: list[tuple[float, float, int]] = []
    queue: asyncio.Queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def worker(http: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            body = {"model": MODEL, "messages": [{"role": "user", "content": f"Question {i}?"}], "max_tokens": 4}
            start = time.monotonic()
            try:
                status = (await http.post(f"{base_url}{CHAT}", json=body, headers=headers)).status_code
            except httpx.HTTPError:
                status = -1  # the connection itself failed
            results.append((start, time.monotonic(), status))
            if on_progress is not None:
                await on_progress(len(results))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
    return results


@pytest.mark.slow
def test_load_has_no_server_errors(server):
    results = asyncio.run(_fire(server.base_url, total=300, concurrency=16))
    statuses = [status for _, _, status in results]
    assert len(statuses) == 300
    assert statuses.count(200) == 300, {s: statuses.count(s) for s in set(statuses)}


@pytest.mark.slow
def test_a_hung_replica_is_replaced_and_only_its_requests_fail(server):
    (victim,) = _model_replica_names()
    stuck_body = {"model": MODEL, "prompt": f"Hello, {HANG_MARKER}", "max_tokens": 4}
    ok_body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4}

    async def main():
        headers = {"Authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(timeout=120) as http:
            async def post(body):
                return (await http.post(f"{server.base_url}{COMPLETIONS}", json=body, headers=headers)).status_code

            stuck = asyncio.create_task(post(stuck_body))
            await asyncio.sleep(0.5)
            behind = [asyncio.create_task(post(ok_body)) for _ in range(3)]  # routed to the stuck replica
            return await stuck, await asyncio.gather(*behind)

    stuck, behind = asyncio.run(main())
    assert stuck == 503 and behind == [503] * 3
    deadline = time.monotonic() + 120
    while (names := _model_replica_names()) in ([victim], []) or len(names) > 1:
        assert time.monotonic() < deadline, f"the stuck replica was not replaced: {names}"
        time.sleep(1)
    deadline = time.monotonic() + 60
    while (status := _post(server, COMPLETIONS, ok_body).status_code) != 200 and time.monotonic() < deadline:
        time.sleep(1)
    assert status == 200
    assert [_post(server, COMPLETIONS, ok_body).status_code for _ in range(4)] == [200] * 4


def _model_replica_names() -> list[tuple[str, str]]:
    return [
        (actor["name"], actor["namespace"])
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("SERVE_REPLICA::") and f"#model-{MODEL}#" in actor["name"]
    ]


@pytest.mark.slow
def test_killed_replica_is_restarted_and_only_in_flight_requests_fail(server):
    (victim,) = _model_replica_names()
    killed = {}

    async def kill_once(done: int):
        if done == 20 and not killed:  # under steady load
            killed["at"] = time.monotonic()
            ray.kill(ray.get_actor(victim[0], namespace=victim[1]), no_restart=True)

    results = asyncio.run(_fire(server.base_url, total=160, concurrency=8, on_progress=kill_once))
    assert "at" in killed and len(results) == 160
    in_flight = [r for r in results if r[0] < killed["at"] < r[1]]
    failed = [r for r in results if r[2] != 200]
    print(f"replica killed with {len(in_flight)} requests in flight; {len(failed)} requests failed: "
          f"{sorted(r[2] for r in failed)}")
    # Only requests that were in flight at the kill fail, and they fail cleanly (503 with a body).
    # Some may not fail at all: the router retries a request the dead replica had not taken yet. A
    # request whose body the dead replica had read is retried too, without its body (Ray's proxy sends
    # it once): 408 after request_body_timeout_s, which clients retry, where it would wait forever.
    assert in_flight, "the replica should have been killed under load"
    assert all(r in in_flight for r in failed)
    assert {r[2] for r in failed} <= {408, 500, 503}
    # Serve replaced the replica, and everything sent after it came back succeeded.
    (replacement,) = _model_replica_names()
    assert replacement != victim
    assert all(r[2] == 200 for r in results if r[0] > killed["at"])
    response = _post(server, CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": 2})
    assert response.status_code == 200
