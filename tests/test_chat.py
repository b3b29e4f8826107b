"""ossrun.chat: multi-turn chats on a tiny random model with the real o200k_harmony vocabulary.

The model's own samples are meaningless, so a scripted sampler plays the completions token by
token; we check rendering, KV reuse (HARMONY.md §11.5), streaming, settings, persistence and
rollback on overflow and interruption. `Script` and `tiny_chat_model` are shared with test_tools.
"""

from __future__ import annotations

import numpy as np
import ossrun
import pytest
from ossrun import ContextOverflowError
from ossrun.chat import Chat, ContentDelta, Done, ReasoningDelta, common_prefix
from ossrun.harmony import Message

_MODEL: dict = {}


def tiny_chat_model(vocab_file, tiny_gguf):
    """The tiny model with the real vocabulary (vocab_file skips without it), loaded once."""
    if "model" not in _MODEL:
        path = tiny_gguf
        # Exact precision: the KV-reuse test compares logits across different chunkings, which the
        # fast path (int16 activations, GEMMs in prefill, GEMVs in decode) would perturb by design.
        _MODEL["model"] = ossrun.load(path, n_ctx=2048, precision="f32")
    return _MODEL["model"]


@pytest.fixture(scope="session")
def model(vocab_file, tiny_gguf):
    return tiny_chat_model(vocab_file, tiny_gguf)


class Script:
    """A sampler that plays one scripted completion per generation (harmony text, special tokens
    allowed, or id lists) and records each generation's prompt (the session's tokens at its first
    token) and first logits. `fail_at` = (generation, token) raises KeyboardInterrupt there."""

    def __init__(self, tokenizer, *completions, fail_at=None):
        self.scripts = [tokenizer.encode(c, allowed_special="all") if isinstance(c, str)
                        else list(c) for c in completions]
        self.fail_at = fail_at
        self.session = None
        self.prompts: list[list[int]] = []
        self.logits: list[np.ndarray] = []
        self.gen, self.pos = 0, 0

    def attach(self, chat: Chat) -> Chat:
        self.session = chat.session
        return chat

    def play(self, generation: int) -> None:
        """Continue with completion `generation` (after an aborted one)."""
        self.gen, self.pos = generation, 0

    def __call__(self, logits: np.ndarray) -> int:
        assert self.gen < len(self.scripts), "the model asked for more than the script holds"
        if self.pos == 0:
            self.prompts.append(self.session.tokens)
            self.logits.append(np.array(logits))
        if (self.gen, self.pos) == self.fail_at:
            raise KeyboardInterrupt
        script = self.scripts[self.gen]
        token = script[self.pos]
        self.pos += 1
        if self.pos == len(script):
            self.gen, self.pos = self.gen + 1, 0
        return token


def scripted_chat(model, *completions, fail_at=None, **kwargs) -> tuple[Chat, Script]:
    script = Script(model.tokenizer, *completions, fail_at=fail_at)
    return script.attach(model.chat(sampler=script, date="2025-06-28", **kwargs)), script


def answer(analysis: str, final: str) -> str:
    return (f"<|channel|>analysis<|message|>{analysis}<|end|>"
            f"<|start|>assistant<|channel|>final<|message|>{final}<|return|>")


def system_tokens(model, prompt: list[int]) -> list[int]:
    """The system message: the prompt up to its first <|end|>."""
    return prompt[:prompt.index(model.tokenizer.special_id("<|end|>")) + 1]


def test_multi_turn_renders_history_and_drops_analysis(model):
    chat, script = scripted_chat(model, answer("The user greets.", "Hello!"),
                                 answer("Second thoughts.", "Fine, thanks."),
                                 instructions="Be brief.")
    r1 = chat.send("Hi")
    assert (r1.content, r1.reasoning, r1.tool_calls, r1.finish_reason) == (
        "Hello!", "The user greets.", [], "stop")
    r2 = chat.send("How are you?")
    assert (r2.content, r2.reasoning) == ("Fine, thanks.", "Second thoughts.")
    assert [(m.role, m.channel) for m in chat.messages] == [
        ("user", None), ("assistant", "analysis"), ("assistant", "final"),
        ("user", None), ("assistant", "analysis"), ("assistant", "final")]
    assert r2.messages == chat.messages[4:]
    # Each prompt is the rendered conversation so far; turn 1's analysis is dropped (§11.4).
    assert script.prompts[0] == chat.render(chat.messages[:1])
    assert script.prompts[1] == chat.render([chat.messages[i] for i in (0, 2, 3)])
    text = model.tokenizer.decode(script.prompts[1])
    assert "# Instructions\n\nBe brief." in text and "Current date: 2025-06-28" in text
    assert "The user greets." not in text
    assert chat.stats.turns == 2


def test_second_turn_prefills_only_new_tokens_and_matches_full_prefill(model):
    chat, script = scripted_chat(model, answer("a", "b"), answer("c", "d"))
    r1 = chat.send("first")
    assert (r1.stats.reused_tokens, r1.stats.prefilled_tokens) == (0, len(script.prompts[0]))
    cached = chat.session.tokens
    r2 = chat.send("second")
    prompt = script.prompts[1]
    lcp = common_prefix(prompt, cached)
    assert lcp > len(script.prompts[0])  # the whole first prompt was reused
    assert r2.stats.prompt_tokens == len(prompt)
    assert r2.stats.reused_tokens == lcp
    assert r2.stats.prefilled_tokens == len(prompt) - lcp
    assert r2.stats.completion_tokens == len(script.scripts[1])
    assert r2.stats.prefill_tok_s > 0 and r2.stats.decode_tok_s > 0
    assert chat.stats.reused_tokens == lcp
    assert chat.stats.prefilled_tokens == len(script.prompts[0]) + len(prompt) - lcp
    assert chat.stats.generated_tokens == len(script.scripts[0]) + len(script.scripts[1])
    fresh = model.session(chat.session.n_ctx).prefill(prompt)
    err = np.abs(script.logits[1] - fresh).max() / np.abs(fresh).max()
    assert err <= 1e-5, f"reused-cache logits differ from a full prefill by {err:.2e} (relative)"


def test_repeating_a_prompt_prefills_one_token(model):
    chat, script = scripted_chat(model, answer("a", "b"), answer("a", "b"))
    chat.send("same")
    chat.session.truncate(len(script.prompts[0]))  # the cache holds exactly the next prompt
    chat.messages.clear()
    r = chat.send("same")
    assert (r.stats.reused_tokens, r.stats.prefilled_tokens) == (len(script.prompts[0]) - 1, 1)


def test_reasoning_change_changes_the_system_message(model):
    chat, _ = scripted_chat(model, answer("a", "b"), answer("c", "d"))
    chat.send("one")
    before = system_tokens(model, chat.render())
    chat.reasoning = "high"
    after = system_tokens(model, chat.render())
    assert before != after
    assert "Reasoning: high" in model.tokenizer.decode(after)
    assert "Reasoning: medium" in model.tokenizer.decode(before)
    r = chat.send("two")
    assert r.stats.reused_tokens == common_prefix(before, after) < len(after)
    with pytest.raises(ValueError, match="reasoning"):
        chat.reasoning = "extreme"
    assert chat.reasoning == "high"


def test_stream_events_concatenate_to_the_reply(model):
    completion = ("<|channel|>analysis<|message|>Step one.<|end|>"
                  "<|start|>assistant<|channel|>analysis<|message|>Step two.<|end|>"
                  "<|start|>assistant<|channel|>final<|message|>Grüße 🌍 — done.<|return|>")
    chat, _ = scripted_chat(model, completion)
    events = list(chat.stream("Hi"))
    assert isinstance(events[-1], Done)
    reply = events[-1].reply
    kinds = [type(e) for e in events[:-1]]
    assert set(kinds) == {ReasoningDelta, ContentDelta}
    assert kinds.index(ContentDelta) > max(i for i, k in enumerate(kinds) if k is ReasoningDelta)
    assert len(kinds) > 4  # streamed token by token, not in one piece
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == reply.reasoning
    assert "".join(e.text for e in events if isinstance(e, ContentDelta)) == reply.content
    assert reply.reasoning == "Step one.\n\nStep two."
    assert reply.content == "Grüße 🌍 — done."


def test_max_tokens_cuts_the_reply(model):
    chat, _ = scripted_chat(model, "<|channel|>final<|message|>" + "word " * 30, max_tokens=8)
    r = chat.send("Talk")
    assert r.finish_reason == "length" and "max_tokens" in r.note
    assert r.stats.completion_tokens == 8
    assert r.content and r.messages[-1].text == r.content


def test_save_load_round_trip_then_continue(model, tmp_path):
    chat, _ = scripted_chat(model, answer("a", "Saved answer."), instructions="Be kind.",
                            reasoning="low", temperature=0.7, top_k=5, max_tokens=100)
    chat.send("Remember me")
    path = tmp_path / "chat.json"
    chat.save(path)
    script = Script(model.tokenizer, answer("b", "Continued."))
    loaded = script.attach(Chat.load(model, path, sampler=script))
    assert loaded.to_dict() == chat.to_dict()
    assert loaded.messages == chat.messages
    assert (loaded.reasoning, loaded.instructions, loaded.temperature, loaded.top_k) == (
        "low", "Be kind.", 0.7, 5)
    assert loaded.render() == chat.render()
    r = loaded.send("Go on")
    assert r.content == "Continued."
    assert script.prompts[0] == chat.render(chat.messages + [Message("user", "Go on")])
    assert Chat.from_dict(model, loaded.to_dict()).messages == loaded.messages
    with pytest.raises(ValueError, match="saved ossrun chat"):
        Chat.from_dict(model, {"messages": []})


def test_context_overflow_rolls_back_and_chat_stays_usable(model):
    endless = "<|channel|>final<|message|>" + "on and on " * 100
    chat, script = scripted_chat(model, answer("a", "ok"), endless, answer("b", "fine"),
                                 n_ctx=160)
    chat.send("short")
    history = list(chat.messages)
    with pytest.raises(ContextOverflowError, match="n_ctx = 160"):
        chat.send("long " * 200)  # the prompt alone does not fit
    assert chat.messages == history
    cut = chat.send("ramble")  # the reply runs into the end of the context: kept, marked
    assert cut.finish_reason == "length" and "n_ctx = 160" in cut.note
    assert cut.content.startswith("on and on") and chat.session.n_past == 160
    assert chat.messages[:len(history)] == history and chat.stats.turns == 2
    with pytest.raises(ContextOverflowError):
        chat.send("more")  # nothing fits after a full context
    chat.messages = history
    script.play(2)
    assert chat.send("again").content == "fine"
    assert chat.messages[:len(history)] == history


def test_interrupted_stream_rolls_back(model):
    chat, script = scripted_chat(model, answer("a", "first"), answer("thinking", "cut short"),
                                 answer("b", "second"), answer("c", "third"),
                                 fail_at=(3, 4))
    chat.send("one")
    history = list(chat.messages)
    for event in chat.stream("two"):
        if isinstance(event, ReasoningDelta):
            break  # the consumer stops listening: the dropped stream rolls back
    assert chat.messages == history
    script.play(2)
    events = chat.stream("two again")
    next(events)
    assert chat.messages[-1].text == "two again"  # the turn is in progress
    events.close()
    assert chat.messages == history
    script.play(3)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C during generation
        chat.send("three")
    assert chat.messages == history and chat.stats.turns == 1
    script.play(2)
    assert chat.send("two").content == "second"


def test_settings_are_checked(model):
    with pytest.raises(ValueError):
        model.chat(reasoning="max")
    with pytest.raises(ValueError):
        model.chat(temperature=-1)
    with pytest.raises(ValueError):
        model.chat(max_tokens=0)
    chat = model.chat(date="2025-01-02", system="You are a test.", seed=1)
    chat.top_p = 0.5
    assert chat.top_p == 0.5
    text = model.tokenizer.decode(chat.render())
    assert text.startswith("<|start|>system<|message|>You are a test.\nKnowledge cutoff: 2024-06"
                           "\nCurrent date: 2025-01-02\n\nReasoning: medium")
    assert "<|start|>developer" not in text  # nothing to say in a developer message
    with pytest.raises(TypeError):
        chat.send(["not", "text"])
    chat.messages.append(Message("user", "x"))
    chat.reset()
    assert chat.messages == []
