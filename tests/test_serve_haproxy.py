"""The Serve app behind Ray Serve's high-throughput ingress, as the KubeRay RayService runs it
(`pajama.serve.options.HIGH_THROUGHPUT_ENV`: HAProxy forwards straight to the replica's own HTTP
server, replicas talk gRPC): the official `openai` client, streaming, `n` with logprobs, the
provenance headers and in-flight batching. The tests are test_serve.py's, collected again here
with this module's `server`; test_serve.py runs them (and the rest) behind Ray's proxy actor.
"""

import psutil
import pytest
from pajama.serve.options import HIGH_THROUGHPUT_ENV

import test_serve
from test_serve import (  # noqa: F401 - collected here, against this module's server
    client,
    test_a_request_joins_a_long_generation_through_serve,
    test_chat_completion,
    test_completion_and_stop_sequence,
    test_n_choices_with_logprobs_through_the_client,
    test_provenance_headers_and_fingerprint,
    test_streaming_chat_matches_the_plain_answer,
    test_streaming_completion_and_raw_event_stream,
)


# An ingress replica that stops keeps serving for 30 s (Serve's default), time for a cloud load balancer
# to take it out of rotation; here nothing routes around it, so the wait would only add to the teardown.
NO_DRAIN_WAIT = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from test_serve.running_server(tmp_path_factory, {**HIGH_THROUGHPUT_ENV, **NO_DRAIN_WAIT})


def test_haproxy_listens_on_the_serve_port(server):
    port = int(server.base_url.rsplit(":", 1)[1])
    listeners = {
        conn.pid for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.laddr.ip == "127.0.0.1"
    }
    assert [psutil.Process(pid).name() for pid in listeners if pid] == ["haproxy"]
