"""The HF serving engine without Ray: chat templates, stops, per-row sampling, in-flight batching,
logprobs and prompt scoring, sources."""

import asyncio
import time

import pytest
import torch
from pajama.models import resolve_source
from pajama.serve.engine import HFEngine, RequestError
from pajama.serve.events import Delta, Failed, Finished
from pajama.serve.rows import Job, Row, Sampling
from pajama.serve.tiny_model import make_tiny_model
from pajama.sft.templates import render_chat


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"), suppress_eos=True)


@pytest.fixture(scope="module")
def engine(model_dir):
    return HFEngine(resolve_source(str(model_dir)))


def run(engine, jobs):
    """Generate for `jobs` together; return per-job (text, finish_reason, completion_tokens, deltas)."""
    for index, job in enumerate(jobs):
        job.index = index

    async def collect():
        events = [[] for _ in jobs]
        async for step in engine.generate(jobs):
            for event in step:
                events[event.index].append(event)
        return events

    results = []
    for row_events in asyncio.run(collect()):
        *deltas, last = row_events
        assert all(isinstance(e, Delta) for e in deltas) and isinstance(last, Finished)
        text = "".join(e.text for e in row_events)
        results.append((text, last.finish_reason, last.completion_tokens, len(deltas)))
    return results


def test_fallback_chat_templates_are_the_sft_formats(engine, model_dir):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Capital of France?"},
    ]
    assert engine.tokenizer.chat_template is None
    assert engine.render_chat(messages) == render_chat(messages, add_generation_prompt=True) == (
        "Be brief.\n<human>: Hi\n<bot>: Hello!<|endoftext|><human>: Capital of France?\n<bot>:"
    )
    instruct = HFEngine(resolve_source(str(model_dir)), kind="instruct")
    assert instruct.render_chat(messages[1:]) == "Q: Hi\nA: Hello!<|endoftext|>\nQ: Capital of France?\nA:"
    job = instruct.prepare(messages=messages[1:2], max_tokens=4, default_max_tokens=4)
    # Where a next question or a chat turn would start: the comparison stops there too (pajama.kinds).
    assert job.stop == ("\nQ:", "<human>:")


def test_tokenizer_chat_template_wins(engine):
    engine.tokenizer.chat_template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}>>"
    try:
        assert engine.render_chat([{"role": "user", "content": "Hi"}]) == "[user] Hi\n>>"
    finally:
        engine.tokenizer.chat_template = None


def test_stop_sequence_is_cut_and_never_leaks_in_deltas(engine):
    tokenizer = engine.tokenizer
    job = Job([1], Sampling(max_tokens=100), stop=("<human>:",), strip_leading_space=True)
    row = Row(job, tokenizer, engine.eos_ids, engine.device)
    ids = tokenizer(" Paris is nice.\n<human>: and more", add_special_tokens=False)["input_ids"]
    events = [row.advance(token) for token in ids]
    emitted = [e for e in events if e is not None]
    assert isinstance(emitted[-1], Finished) and emitted[-1].finish_reason == "stop"
    assert all(isinstance(e, Delta) and "<" not in e.text for e in emitted[:-1])
    assert "".join(e.text for e in emitted) == "Paris is nice.\n"
    # After the stop the row is finished and ignores further tokens.
    assert row.finished and row.advance(ids[0]) is None


def test_token_budget_and_eos(engine):
    tokenizer = engine.tokenizer
    row = Row(Job([1], Sampling(max_tokens=3), (), False), tokenizer, engine.eos_ids, engine.device)
    ids = tokenizer("The quick brown fox jumps", add_special_tokens=False)["input_ids"]
    events = [row.advance(token) for token in ids[:3]]
    assert events[-1] == Finished(events[-1].text, "length", 3)
    eos_row = Row(Job([1], Sampling(max_tokens=10), (), False), tokenizer, engine.eos_ids, engine.device)
    eos_row.advance(ids[0])
    final = eos_row.advance(tokenizer.eos_token_id)
    assert isinstance(final, Finished) and final.finish_reason == "stop" and final.completion_tokens == 2


def test_one_batch_serves_rows_with_different_parameters(engine):
    greedy = {"max_tokens": 12, "default_max_tokens": 16, "temperature": 0.0}
    alone = run(engine, [engine.prepare(prompt="The capital of", **greedy)])[0]
    batch = [
        engine.prepare(prompt="The capital of", **greedy),
        engine.prepare(prompt="Hello, who are you? I am", max_tokens=5, default_max_tokens=16, seed=1),
        engine.prepare(messages=[{"role": "user", "content": "Hi"}], max_tokens=20, default_max_tokens=16,
                       temperature=0.8, top_k=20, top_p=0.9, seed=2),
        engine.prepare(prompt="The capital of", stream=False, **greedy),
    ]
    results = run(engine, batch)
    # Left padding and per-row sampling leave the greedy row exactly as it was alone.
    assert results[0][:3] == alone[:3] == (alone[0], "length", 12)
    assert [r[2] for r in results] == [12, 5, 20, 12]
    assert all(r[1] == "length" for r in results)
    assert results[0][3] > 1, "tokens arrive as several deltas"
    # A non-streaming row gets the same text in one Finished event.
    assert results[3][0] == alone[0] and results[3][3] == 0


def test_seed_makes_sampling_reproducible(engine):
    def sample(seed):
        job = engine.prepare(prompt="Once", max_tokens=10, default_max_tokens=16, temperature=1.0, seed=seed)
        return run(engine, [job])[0][0]

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_prepare_rejects_what_does_not_fit(engine):
    with pytest.raises(RequestError) as too_long:
        engine.prepare(prompt="x " * 400, max_tokens=None, default_max_tokens=16)
    assert too_long.value.code == "context_length_exceeded" and too_long.value.param == "prompt"
    with pytest.raises(RequestError) as budget:
        engine.prepare(prompt="Hello", max_tokens=engine.context_length, default_max_tokens=16)
    assert budget.value.param == "max_tokens"
    with pytest.raises(RequestError):
        engine.prepare(prompt="", max_tokens=None, default_max_tokens=16)
    # Without max_tokens the default is clamped to the room left in the context.
    job = engine.prepare(prompt="x " * 120, max_tokens=None, default_max_tokens=1000)
    assert job.sampling.max_tokens == engine.context_length - len(job.input_ids)
    chat = engine.prepare(messages=[{"role": "user", "content": "Hi"}], max_tokens=4, default_max_tokens=16, stop=["END"])
    assert chat.stop == ("END", "<human>:") and chat.strip_leading_space


def test_completions_of_a_fine_tuned_model_stop_at_its_next_turn(engine, model_dir):
    prompt = "<human>: Hi\n<bot>:"
    job = engine.prepare(prompt=prompt, max_tokens=8, default_max_tokens=16, stop=["END"])
    assert job.stop == ("END", "<human>:") and not job.strip_leading_space
    row = Row(job, engine.tokenizer, engine.eos_ids, engine.device)
    ids = engine.tokenizer(" Paris.\n<human>: and you?", add_special_tokens=False)["input_ids"]
    final = [e for e in (row.advance(token) for token in ids) if e is not None][-1]
    assert isinstance(final, Finished) and final.finish_reason == "stop" and row.text == " Paris.\n"
    instruct = HFEngine(resolve_source(str(model_dir)), kind="instruct")
    assert instruct.prepare(prompt="Q: Hi\nA:", max_tokens=4, default_max_tokens=4).stop == ("\nQ:", "<human>:")
    # A base model has no turns: its text runs on until EOS, the budget or the caller's stops.
    base = HFEngine(resolve_source(str(model_dir)), kind="base")
    assert base.prepare(prompt=prompt, max_tokens=4, default_max_tokens=4).stop == ()


def test_local_source_needs_a_model_directory(tmp_path, model_dir):
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_source(str(tmp_path))
    resolved = resolve_source(str(model_dir))
    assert resolved.version.startswith("sha256-") and resolved.run_id is None
    assert resolve_source(str(model_dir)).version == resolved.version


@pytest.mark.slow  # log_model + two downloads: ~20 s
def test_mlflow_registry_source(tmp_path, model_dir, monkeypatch):
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment_id = client.create_experiment("serve-test", artifact_location=str(tmp_path / "artifacts"))
    # log_model needs the global URIs; patching them (not mlflow.set_tracking_uri, which also writes
    # os.environ) restores them exactly after the test.
    monkeypatch.setattr(tracking_utils, "_tracking_uri", uri)
    monkeypatch.setattr(registry_utils, "_registry_uri", uri)
    with mlflow.start_run(experiment_id=experiment_id) as run_info:
        logged = mlflow.transformers.log_model(
            transformers_model=str(model_dir),
            task="text-generation",
            name="model",
            registered_model_name="pajama-chat",
            pip_requirements=["transformers", "torch"],  # inferring them imports torchvision
        )
    client.set_registered_model_alias("pajama-chat", "production", logged.registered_model_version)

    by_alias = resolve_source("models:/pajama-chat@production", tracking_uri=uri, cache_dir=str(tmp_path / "cache"))
    assert by_alias.version == "pajama-chat/1"
    assert by_alias.run_id == run_info.info.run_id
    assert (by_alias.weights_dir / "model.safetensors").is_file()
    by_version = resolve_source("models:/pajama-chat/1", tracking_uri=uri, cache_dir=str(tmp_path / "cache2"))
    assert (by_version.version, by_version.run_id) == (by_alias.version, by_alias.run_id)
    engine = HFEngine(by_alias)
    job = engine.prepare(prompt="Hi", max_tokens=3, default_max_tokens=3, temperature=0)
    assert run(engine, [job])[0][1:3] == ("length", 3)

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="tracking URI"):
        resolve_source("models:/pajama-chat@production")
    with pytest.raises(ValueError, match="expected models"):
        resolve_source("models:/pajama-chat", tracking_uri=uri)


def test_a_request_joins_a_running_batch_and_leaves_it_when_done(model_dir):
    sizes = []
    engine = HFEngine(resolve_source(str(model_dir)), on_admit=sizes.append)

    def job(max_tokens):
        return engine.prepare(prompt="Hello", max_tokens=max_tokens, default_max_tokens=16, temperature=0)

    async def consume(jobs, log):
        for index, job in enumerate(jobs):
            job.index = index
        async for step in engine.generate(jobs):
            log += [(time.monotonic(), event) for event in step]
        return log

    async def main():
        long_log = []
        long_task = asyncio.create_task(consume([job(200)], long_log))
        while len(long_log) < 20:  # the long request is well into its generation...
            await asyncio.sleep(0.005)
        short_log = await consume([job(5), job(6)], [])  # ...when two short ones arrive
        return await long_task, short_log

    long_log, short_log = asyncio.run(main())
    long_end = long_log[-1][0]
    assert isinstance(long_log[-1][1], Finished) and long_log[-1][1].completion_tokens == 200
    # The short requests got their first token, and all of it, long before the long one ended.
    assert short_log[0][0] < long_end and short_log[-1][0] < long_end
    assert sorted(e.completion_tokens for _, e in short_log if isinstance(e, Finished)) == [5, 6]
    assert sizes[:2] == [1, 3]
    # Joining a batch changes nothing in a greedy answer.
    texts = run(engine, [job(5)])[0][0], "".join(e.text for _, e in short_log if e.index == 0)
    assert texts[0] == texts[1]


def test_echo_with_logprobs_scores_the_prompt_like_a_forward_pass(engine):
    ids = engine.tokenizer("The capital of France is Paris.", add_special_tokens=False)["input_ids"]
    job = engine.prepare(prompt=ids, max_tokens=0, default_max_tokens=16, temperature=0, logprobs=3, echo=True, stream=False)
    busy = engine.prepare(prompt="Hello there", max_tokens=8, default_max_tokens=16, temperature=0)
    (text, reason, tokens, _), _ = run(engine, [job, busy])  # scored next to a decoding row
    assert (reason, tokens) == ("length", 0) and text == engine.tokenizer.decode(ids)
    finished = asyncio.run(_last_event(engine, job))
    with torch.inference_mode():
        logits = engine.model(torch.tensor([ids])).logits[0].float()
    expected = torch.log_softmax(logits, dim=-1)[torch.arange(len(ids) - 1), ids[1:]]
    entries = finished.logprobs
    assert [e.token for e in entries] == [engine.tokenizer.decode([i]) for i in ids]
    assert entries[0].logprob is None
    assert torch.allclose(torch.tensor([e.logprob for e in entries[1:]]), expected, atol=1e-4)
    assert all(len(e.top) == 3 and e.top[0][1] >= e.logprob - 1e-6 for e in entries[1:])


def test_generated_tokens_carry_their_logprobs(engine):
    job = engine.prepare(prompt="Once", max_tokens=6, default_max_tokens=16, temperature=0, logprobs=2)
    entries = [entry for event in asyncio.run(_events(engine, job)) for entry in event.logprobs]
    assert len(entries) == 6
    # Greedy: each chosen token is the most likely one.
    assert all(abs(e.logprob - e.top[0][1]) < 1e-6 and e.token == e.top[0][0] for e in entries)


async def _events(engine, job):
    job.index = 0
    return [event async for step in engine.generate([job]) for event in step]


async def _last_event(engine, job):
    job.cancelled = False
    return (await _events(engine, job))[-1]


def test_a_hung_generation_thread_is_reported_and_its_requests_fail_retryably(model_dir, monkeypatch):
    monkeypatch.setenv("PAJAMA_TEST_HANG_ON", "HANG")
    engine = HFEngine(resolve_source(str(model_dir)))  # its generation thread hangs for good below

    async def main():
        assert engine.stalled_s() == 0  # idle is not stuck
        job = engine.prepare(prompt="please HANG now", max_tokens=4, default_max_tokens=4)
        stream = engine.generate([job])
        waiting = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.5)
        assert not waiting.done() and engine.stalled_s() >= 0.4
        engine.abandon("stuck")
        (failed,) = await waiting
        return failed

    failed = asyncio.run(main())
    assert isinstance(failed, Failed) and failed.retryable and failed.message == "stuck"


@pytest.mark.parametrize("strip_leading_space", [False, True])
def test_a_row_decodes_each_token_once_and_streams_exactly_the_whole_text(engine, strip_leading_space):
    """Incremental decoding: the streamed deltas add up to the decode of all the tokens (characters
    split across byte tokens are held back, never sent as U+FFFD), and the whole output is decoded
    once, at the end, rather than at every step (which made long outputs quadratic)."""
    tokenizer = engine.tokenizer
    text = "  héllo wörld ✓ 日本語 — the capital of France is Paris."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    calls = []
    decode = tokenizer.decode

    class CountingTokenizer:
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def decode(self, *args, **kwargs):
            calls.append(args)
            return decode(*args, **kwargs)

    job = Job([0], Sampling(len(ids), temperature=0), (), strip_leading_space=strip_leading_space)
    row = Row(job, CountingTokenizer(), engine.eos_ids, torch.device("cpu"))
    assert row.stream is not None
    events = [row.advance(token) for token in ids]
    assert all(e is None or isinstance(e, Delta) for e in events[:-1]) and isinstance(events[-1], Finished)
    streamed = "".join(e.text for e in events if e is not None)
    expected = decode(ids, skip_special_tokens=True)
    assert streamed == (expected.lstrip() if strip_leading_space else expected)
    assert not any("\ufffd" in e.text for e in events if e is not None)
    assert len(calls) == 1  # the final text only
