"""Continuous batching seen from clients: 8 greedy requests at once get exactly the replies each
gets alone (the batched step gives every sequence its own logits, tests/test_batch.py), and a
prompt seen before is served from the cache of the slot that holds it."""

from __future__ import annotations

import concurrent.futures

import pytest

pytest.importorskip("openai")

from server_util import Server  # noqa: E402

PROMPTS = [f"Request number {i}: {'tell me about ' * (i + 1)}the sea" for i in range(8)]


@pytest.fixture(scope="module")
def server(tiny_gguf, vocab_file, tmp_path_factory):
    s = Server(tiny_gguf, tmp_path_factory.mktemp("serve8"), "--ctx", 1024, "--parallel", 8,
               "--precision", "f32")
    yield s
    s.stop()


def complete(client, prompt: str) -> list[str]:
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0, logprobs=0)
    assert r.choices[0].finish_reason == "length"
    return r.choices[0].logprobs.tokens


def test_eight_clients_at_once_get_the_replies_each_gets_alone(server):
    client = server.client()
    alone = [complete(client, p) for p in PROMPTS]
    steps_before = server.health()["steps"]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda p: complete(server.client(), p), PROMPTS))
    assert together == alone
    # Batched: far fewer steps than the 8 x 24 tokens a request-at-a-time server would take.
    assert server.health()["steps"] - steps_before < 8 * 24 * 0.75


def test_a_repeated_prompt_reuses_its_slot(server):
    client = server.client()
    long_prompt = "Once upon a time " * 40
    first = client.completions.create(model="tiny", prompt=long_prompt + "the end", max_tokens=2,
                                      temperature=0)
    again = client.completions.create(model="tiny", prompt=long_prompt + "a new ending", max_tokens=2,
                                      temperature=0)
    assert first.usage.prompt_tokens > 160
    assert again.usage.prompt_tokens_details.cached_tokens >= len(long_prompt.split()) - 2
