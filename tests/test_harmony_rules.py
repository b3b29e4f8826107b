"""One or more tests per rule of shared/spec/HARMONY.md, with the spec's own examples and ids.

The oracle-generated vectors for the same edge cases live in tests/data/harmony/rules_*.json
(checked by test_harmony_vectors.py); these tests state each rule explicitly.
"""

from __future__ import annotations

import pytest
from ossrun.harmony import (
    CONTENT,
    EXPECT_START,
    HEADER,
    DeveloperContent,
    HarmonyError,
    Message,
    ResponseFormat,
    StreamParser,
    SystemContent,
    ToolDescription,
    ToolNamespace,
    developer_message,
    parse_header,
    parse_messages,
    render_conversation,
    render_message,
    schema_to_typescript,
    stop_token_ids,
    system_message,
    terminator_token_ids,
)
from ossrun.harmony.render import description_lines, developer_text, system_text, tools_section
from ossrun.harmony.schema_ts import format_default, format_float, json_compact
from ossrun.tokenizer import o200k_harmony_from_tiktoken_file

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = (
    200006, 200007, 200008, 200005, 200003, 200002, 200012)


@pytest.fixture(scope="module")
def tok(vocab_file):
    return o200k_harmony_from_tiktoken_file(vocab_file)


def ids(tok, text):
    """Harmony text with <|...|> markers as special ids (like the oracle's `text` completions)."""
    return tok.encode(text, allowed_special="all")


WEATHER_TOOL = ToolDescription(
    "get_current_weather", "Gets the current weather in the provided location.",
    {"type": "object",
     "properties": {"location": {"type": "string",
                                 "description": "The city and state, e.g. San Francisco, CA"},
                    "format": {"type": "string", "enum": ["celsius", "fahrenheit"],
                               "default": "celsius"}},
     "required": ["location"]})


# ---------------------------------------------------------------------------------------------
# §1.5 encoding rules, §3 message framing
# ---------------------------------------------------------------------------------------------


def test_piecewise_encoding_quirk(tok):
    body = render_message(Message("user", ["part one, ", "part two"]), tok)[3:-1]
    assert body == [5815, 1001, 11, 220, 5815, 1920]
    assert tok.encode("part one, part two") == [5815, 1001, 11, 997, 1920]


def test_literal_special_text_is_ordinary(tok):
    assert render_message(Message("user", "Hi <|end|>"), tok) == [
        START, 1428, MESSAGE, 12194, 464, 91, 419, 91, 29, END]


def test_tool_call_recipient_before_channel(tok):
    call = Message("assistant", '{"location":"Tokyo"}', channel="commentary",
                   recipient="functions.get_weather", content_type="<|constrain|>json")
    assert render_message(call, tok) == [
        200006, 173781, 316, 28, 44580, 775, 170154, 200005, 12606, 815, 220, 200003, 4108,
        200008, 10848, 7693, 7534, 173844, 18583, 200012]
    result = Message("tool", '{"temp":20}', name="functions.get_weather", recipient="assistant",
                     channel="commentary")
    assert render_message(result, tok) == [
        200006, 44580, 775, 170154, 316, 28, 173781, 200005, 12606, 815, 200008, 10848, 7340,
        1243, 455, 92, 200007]


def test_author_name_is_a_second_piece(tok):
    assert render_message(Message("user", "x", name="bob"), tok) == [
        START, 1428, *tok.encode(":bob"), MESSAGE, *tok.encode("x"), END]


def test_recipient_all_is_hidden_but_ends_with_call(tok):
    out = render_message(Message("assistant", "hi", channel="commentary", recipient="all"), tok)
    assert out == [START, 173781, CHANNEL, 12606, 815, MESSAGE, *tok.encode("hi"), CALL]
    assert render_message(Message("user", "hi", recipient="all"), tok)[-1] == END


@pytest.mark.parametrize("content_type, header_tail", [
    ("<|constrain|>json", [220, CONSTRAIN, 4108]),
    ("<|constrain|>", [220, CONSTRAIN]),
    ("code", [3490]),
    ("json", [5701]),
])
def test_content_type_rendering(tok, content_type, header_tail):
    out = render_message(Message("assistant", "", channel="final", content_type=content_type), tok)
    assert out == [START, 173781, CHANNEL, 17196, *header_tail, MESSAGE, END]


def test_empty_content_renders_nothing(tok):
    assert render_message(Message("user", ""), tok) == [START, 1428, MESSAGE, END]
    assert render_message(Message("user", []), tok) == [START, 1428, MESSAGE, END]


def test_render_validation_errors(tok):
    with pytest.raises(HarmonyError, match="Tools should have a name!"):
        render_message(Message("tool", "r"), tok)
    with pytest.raises(HarmonyError, match="^SystemContent may only appear in system messages, "
                                           "found in User$"):
        render_message(Message("user", [SystemContent()]), tok)
    with pytest.raises(HarmonyError, match="^DeveloperContent may only appear in developer "
                                           "messages, found in Assistant$"):
        render_message(Message("assistant", [DeveloperContent()]), tok)
    with pytest.raises(HarmonyError, match="unknown role"):
        Message("robot", "x")
    with pytest.raises(HarmonyError, match="parameters must be a JSON object"):
        ToolDescription("t", "", [1, 2])


# ---------------------------------------------------------------------------------------------
# §4 system message, §5 developer message, §6 tools section, §8 built-in tools
# ---------------------------------------------------------------------------------------------

DEFAULT_SYSTEM = """You are ChatGPT, a large language model trained by OpenAI.
Knowledge cutoff: 2024-06
Current date: 2025-06-28

Reasoning: medium

# Valid channels: analysis, commentary, final. Channel must be included for every message."""


def test_system_defaults_exact():
    sc = SystemContent(conversation_start_date="2025-06-28")
    assert system_text(sc) == DEFAULT_SYSTEM
    assert system_text(sc, conversation_has_function_tools=True) == DEFAULT_SYSTEM + (
        "\nCalls to these tools must go to the commentary channel: 'functions'.")


def test_system_unset_fields_render_nothing(tok):
    sc = SystemContent(model_identity=None, knowledge_cutoff=None, reasoning_effort=None,
                       valid_channels=None)
    assert render_message(Message("system", [sc]), tok) == [START, 17360, MESSAGE, END]
    assert system_text(SystemContent(model_identity=None, knowledge_cutoff=None,
                                     reasoning_effort="high", valid_channels=["final"],
                                     channel_required=False)) == (
        "Reasoning: high\n\n# Valid channels: final.")
    assert "Valid channels" not in system_text(SystemContent(valid_channels=[]))
    with pytest.raises(HarmonyError, match="reasoning_effort"):
        SystemContent(reasoning_effort="max")


def test_functions_line_needs_function_tools_anywhere(tok):
    convo = [system_message(), Message("user", "hi"),
             developer_message(function_tools=[ToolDescription("ping", "Ping.")])]
    text = tok.decode(render_conversation(convo, tok, mode="conversation"))
    assert "Calls to these tools must go to the commentary channel: 'functions'." in text
    no_tools = [system_message(tools=["browser"]), developer_message(function_tools=[])]
    text = tok.decode(render_conversation(no_tools, tok, mode="conversation"))
    assert "Calls to these tools" not in text


def test_developer_message_examples():
    assert developer_text(DeveloperContent("Always respond in riddles")) == (
        "# Instructions\n\nAlways respond in riddles")
    assert developer_text(DeveloperContent("")) == "# Instructions\n\n"
    assert developer_text(DeveloperContent()) == ""
    dc = DeveloperContent("Use a friendly tone.").with_function_tools([
        ToolDescription("get_location", "Gets the location of the user."),
        ToolDescription(WEATHER_TOOL.name, WEATHER_TOOL.description, {
            "type": "object",
            "properties": {"location": WEATHER_TOOL.parameters["properties"]["location"],
                           "format": WEATHER_TOOL.parameters["properties"]["format"]},
            "required": ["location"]})])
    assert developer_text(dc) == """# Instructions

Use a friendly tone.

# Tools

## functions

namespace functions {

// Gets the location of the user.
type get_location = () => any;

// Gets the current weather in the provided location.
type get_current_weather = (_: {
// The city and state, e.g. San Francisco, CA
location: string,
format?: "celsius" | "fahrenheit", // default: celsius
}) => any;

} // namespace functions"""


def test_response_formats_are_a_separate_piece(tok):
    schema = {"properties": {"items": {"type": "array",
                                       "description": "entries on the shopping list",
                                       "items": {"type": "string"}}},
              "type": "object"}
    msg = developer_message(instructions="You are a helpful shopping assistant",
                            response_formats=[ResponseFormat("shopping_list", schema,
                                                             "A list of items to buy")])
    text = ("# Instructions\n\nYou are a helpful shopping assistant")
    formats = ("\n\n# Response Formats\n\n## shopping_list\n\n// A list of items to buy\n"
               '{"properties":{"items":{"type":"array","description":"entries on the shopping '
               'list","items":{"type":"string"}}},"type":"object"}')
    assert render_message(msg, tok) == [START, 77944, MESSAGE, *tok.encode(text),
                                        *tok.encode(formats), END]
    alone = developer_message(response_formats=[ResponseFormat("f", {})])
    assert render_message(alone, tok)[3:-1] == tok.encode("# Response Formats\n\n## f\n\n{}")


def test_tools_section_namespace_order_and_lines():
    namespaces = {ns.name: ns for ns in [
        ToolNamespace("functions", None, [ToolDescription("f", "ff")]),
        ToolNamespace("alpha", "Alpha description only"),
    ]}
    assert tools_section(namespaces) == """# Tools

## alpha

Alpha description only

## functions

namespace functions {

// ff
type f = () => any;

} // namespace functions"""
    assert tools_section({"z": ToolNamespace("z")}) == "# Tools\n\n## z\n"


@pytest.mark.parametrize("text, lines", [
    ("", []), ("a\n", ["a"]), ("a\n\n", ["a", ""]), ("\n", [""]), ("a\r\nb", ["a", "b"]),
    ("x\ry", ["x\ry"]), ("a\r", ["a\r"]), ("a\u2028b\x0bc", ["a\u2028b\x0bc"]),
])
def test_description_lines(text, lines):
    assert description_lines(text) == lines


def test_builtin_tools(tok):
    sc = SystemContent(conversation_start_date="2025-06-28").with_tools("python", "browser")
    text = system_text(sc)
    assert text.index("## browser") < text.index("## python")
    assert "// Tool for browsing.\n" in text and "namespace browser {" in text
    assert "type open = (_: {\nid?: number | string, // default: -1\n" in text
    assert "## python\n\nUse this tool to execute Python code" in text
    assert "namespace python" not in text
    replaced = sc.with_tools(ToolNamespace("python", "stateless"))
    assert "## python\n\nstateless\n\n# Valid channels" in system_text(replaced)


# ---------------------------------------------------------------------------------------------
# §7 JSON Schema -> TypeScript
# ---------------------------------------------------------------------------------------------


def test_schema_worked_example_nested():
    schema = {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "object", "description": "object a", "required": ["x"], "properties": {
            "x": {"type": "integer", "description": "x coordinate"},
            "y": {"type": "object", "properties": {"z": {"type": "boolean"}}, "required": ["z"]}}},
        "items": {"type": "array", "items": {"type": "object",
                                             "properties": {"k": {"type": "string"}}}},
        "any_array": {"type": "array"},
        "enum_array": {"type": "array", "items": {"type": "string", "enum": ["p", "q"]}},
        "matrix": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}
    assert schema_to_typescript(schema) == """{
// object a
a:     // object a
{
    // x coordinate
    x: number,
    y?: {
        z: boolean,
        },
    },
items?: {
    k?: string,
    }[],
any_array?: Array<any>,
enum_array?: "p" | "q"[],
matrix?: number[][],
}"""


def test_schema_worked_example_one_of():
    schema = {"type": "object", "required": ["variant_descs"], "properties": {
        "same_desc": {"oneOf": [{"type": "string", "description": "same"},
                                {"type": "number", "nullable": True, "default": 5}],
                      "description": "same"},
        "variant_descs": {"oneOf": [{"type": "string", "description": "first"},
                                    {"type": "number", "description": "second"}]},
        "with_default": {"oneOf": [{"type": "object", "properties": {"q": {"type": "string"}}},
                                   {"type": "null"}],
                         "default": "d", "description": "prop level"}}}
    assert schema_to_typescript(schema) == """{
same_desc?:
 | string
 | number | null // default: 5
,
variant_descs:
 | string // first
 | number // second
,
// prop level
// default: "d"
with_default?:
 | {
   q?: string,
   }
 | any
,
}"""


@pytest.mark.parametrize("schema, ts", [
    ({"type": ["integer", "string", 3]}, "number | string"),
    ({"type": ["string", "null"]}, "string | null"),
    ({"type": []}, "any"),
    ({"type": "string", "enum": ["a", 1, None]}, '"a"'),
    ({"type": "string", "enum": [1]}, "string"),
    ({"type": "integer", "enum": [1, 2]}, "number"),
    ({"enum": ["a", "b"]}, "any"),
    ({"const": "x"}, "any"),
    ({"anyOf": [{"type": "string"}]}, "any"),
    ({"type": "null"}, "any"),
    ({}, "any"),
    ({"type": "string", "description": "ignored at top", "default": "x"}, "string"),
    ({"type": "object", "description": "desc"}, "// desc\n{\n}"),
    ({"oneOf": [{"type": "string", "enum": ["a"], "default": "a"}]}, '\n | "a" // default: "a"'),
])
def test_schema_rules(schema, ts):
    assert schema_to_typescript(schema) == ts


def test_schema_property_comments_and_defaults():
    schema = {"type": "object", "properties": {
        "t": {"type": "string", "title": "T", "description": "line one\nline two",
              "examples": ["a", 1]},
        "n": {"type": "integer", "nullable": True, "default": None},
        "e": {"type": "string", "enum": ["on"], "default": "on"},
        "s": {"type": "string", "default": 'say "hi"'},
        "o": {"type": "object", "default": {"a": 1, "s": "é\n"}},
    }}
    assert schema_to_typescript(schema) == """{
// T
//
// line one
line two
// Examples:
// - "a"
t?: string,
n?: number | null, // default: null
e?: "on", // default: on
s?: string, // default: "say "hi""
o?: {
    }, // default: {"a":1,"s":"é\\n"}
}"""


@pytest.mark.parametrize("value, text", [
    (1.0, "1.0"), (100.0, "100.0"), (1e15, "1000000000000000.0"), (1.5, "1.5"),
    (123456789.125, "123456789.125"), (0.0001, "0.0001"), (0.000015, "0.000015"),
    (1e16, "1e16"), (1e-6, "1e-6"), (1.23e-18, "1.23e-18"), (1e20, "1e20"), (-0.0, "-0.0"),
    (-2.5, "-2.5"), (1e-5, "0.00001"), (float("nan"), "null"),
])
def test_float_formatting(value, text):
    assert format_float(value) == text


def test_default_formatting():
    assert format_default("celsius", {"enum": ["celsius"]}) == "celsius"
    assert format_default("a\nb", {}) == '"a\nb"'
    assert format_default(3, {}) == "3"
    assert format_default(True, {}) == "true"
    assert json_compact({"a": [1, "\x01/\u00e9"], "b": None}) == '{"a":[1,"\\u0001/\u00e9"],"b":null}'
    assert json_compact(2**64) == "1.8446744073709552e19"


# ---------------------------------------------------------------------------------------------
# §11 conversation rendering
# ---------------------------------------------------------------------------------------------


def _turns(*spec):
    """('u', text) user, ('a', text) analysis, ('f', text) final, ('c', text) tool call."""
    out = []
    for kind, text in spec:
        if kind == "u":
            out.append(Message("user", text))
        elif kind == "c":
            out.append(Message("assistant", text, channel="commentary", recipient="functions.f",
                               content_type="<|constrain|>json"))
        else:
            out.append(Message("assistant", text, channel={"a": "analysis", "f": "final"}[kind]))
    return out


def _kept(tok, messages, **kw):
    text = tok.decode(render_conversation(messages, tok, mode="conversation", **kw))
    return [m.text for m in messages if f"<|message|>{m.text}<|" in text]


def test_completion_suffix_and_modes(tok):
    convo = _turns(("u", "hi"))
    base = render_conversation(convo, tok, mode="conversation")
    assert render_conversation(convo, tok) == base + [START, 173781]
    assert render_conversation(convo, tok, next_role="user") == base + [START, 1428]
    with pytest.raises(HarmonyError):
        render_conversation(convo, tok, mode="chat")


def test_analysis_dropped_before_first_final(tok):
    assert _kept(tok, _turns(("u", "q"), ("a", "t"), ("f", "a"), ("u", "q2"))) == ["q", "a", "q2"]
    assert _kept(tok, _turns(("u", "q"), ("a", "t"), ("f", "a"), ("u", "q2")),
                 auto_drop_analysis=False) == ["q", "t", "a", "q2"]
    three = _turns(("u", "q1"), ("a", "t1"), ("f", "a1"), ("u", "q2"), ("a", "t2"), ("f", "a2"))
    assert _kept(tok, three) == ["q1", "a1", "q2", "t2", "a2"]


def test_nothing_dropped_while_tool_loop_runs(tok):
    convo = _turns(("u", "q"), ("a", "t1"), ("f", "a1"), ("u", "q2"), ("a", "t2"), ("c", "{}"))
    assert _kept(tok, convo) == ["q", "t1", "a1", "q2", "t2", "{}"]


def test_training_rendering(tok):
    convo = _turns(("u", "q"), ("a", "t"), ("f", "4"))
    training = render_conversation(convo, tok, mode="training")
    conversation = render_conversation(convo, tok, mode="conversation")
    assert training == conversation[:-1] + [RETURN]
    assert len(training) < len(render_conversation(convo, tok, mode="conversation",
                                                   auto_drop_analysis=False))
    call = _turns(("u", "q"), ("c", "{}"))
    assert render_conversation(call, tok, mode="training")[-1] == CALL
    assert render_conversation(_turns(("f", "a"), ("u", "q")), tok, mode="training")[-1] == END


def test_stop_tokens(tok):
    assert stop_token_ids(tok) == [RETURN, CALL]
    assert terminator_token_ids(tok) == [RETURN, END, CALL]


# ---------------------------------------------------------------------------------------------
# §13.3 header grammar
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, preset, expected", [
    ("<|channel|>final", "assistant", ("assistant", None, "final", None, None)),
    ("<|channel|>commentary to=functions.f <|constrain|>json", "assistant",
     ("assistant", None, "commentary", "functions.f", "<|constrain|>json")),
    ("<|channel|>commentary to=functions.f<|constrain|>json", "assistant",
     ("assistant", None, "commentary", "functions.f", "<|constrain|>json")),
    (" to=functions.f<|channel|>commentary <|constrain|>json", "assistant",
     ("assistant", None, "commentary", "functions.f", "<|constrain|>json")),
    ("<|channel|>commentary to=functions.f json", "assistant",
     ("assistant", None, "commentary", "functions.f", "json")),
    ("<|channel|>analysis to=python code", "assistant",
     ("assistant", None, "analysis", "python", "code")),
    ("assistant to=functions.x", None, ("assistant", None, None, "functions.x", None)),
    ("functions.get_weather to=assistant<|channel|>commentary", None,
     ("tool", "functions.get_weather", "commentary", "assistant", None)),
    ("tool", None, ("tool", "tool", None, None, None)),
    ("to=python", None, ("tool", "to=python", None, None, None)),
    ("<|channel|>final json", "assistant", ("assistant", None, "final", "json", None)),
    ("<|channel|>final <|constrain|>json", "assistant",
     ("assistant", None, "final", "<|constrain|>json", None)),
    ("assistant<|channel|>final", "assistant", ("assistant", None, "final", None, None)),
    ("<|start|>assistant<|channel|>final", "assistant",
     ("assistant", None, "final", "<|start|>assistant", None)),
    ("\u3000<|channel|>final\u00a0x", "assistant", ("assistant", None, "final", "x", None)),
    ("<|channel|>final\x1cx", "assistant", ("assistant", None, "final\x1cx", None, None)),
    ("<|channel|>a<|channel|>b", "assistant", ("assistant", None, "a", "<|channel|>b", None)),
    ("<|channel|>c\tto=f\n\r json ", "assistant", ("assistant", None, "c", "f", "json")),
])
def test_header_grammar(header, preset, expected):
    h = parse_header(header, preset)
    assert (h.role, h.name, h.channel, h.recipient, h.content_type) == expected


@pytest.mark.parametrize("header, preset, error", [
    ("<|channel|>commentary to=functions.f <|constrain|> json", "assistant",
     'unexpected tokens remaining in message header: Some("to=functions.f")'),
    ("<|channel|>analysis x y z", "assistant",
     'unexpected tokens remaining in message header: Some("x")'),
    ("<|channel|> final", "assistant",
     "channel marker present but no channel value found in header"),
    ("", None, "message header did not contain a role"),
    ("functions.x", None, "Unknown role: functions.x"),
    ("assistant:bob", None, "Unknown role: assistant:bob"),
])
def test_header_errors(header, preset, error):
    with pytest.raises(HarmonyError) as exc:
        parse_header(header, preset)
    assert str(exc.value) == error


# ---------------------------------------------------------------------------------------------
# §13 parsing and streaming
# ---------------------------------------------------------------------------------------------


def _stream(tok, tokens, role="assistant", strict=True):
    p = StreamParser(tok, role, strict)
    deltas = [p.process(t).last_content_delta for t in tokens]
    return p, deltas


def test_parse_completion(tok):
    tokens = ids(tok, "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant"
                      "<|channel|>final<|message|>2 + 2 = 4.<|return|>")
    assert [m.to_dict() for m in parse_messages(tokens, tok)] == [
        {"role": "assistant", "channel": "analysis", "content": "Think."},
        {"role": "assistant", "channel": "final", "content": "2 + 2 = 4."}]


def test_stream_properties(tok):
    p = StreamParser(tok, "assistant")
    assert (p.state, p.current_role, p.current_content) == (HEADER, "assistant", "")
    for t in ids(tok, "<|channel|>final"):
        p.process(t)
    assert (p.state, p.current_channel) == (HEADER, None)  # headers are not parsed incrementally
    p.process(MESSAGE)
    assert (p.state, p.current_channel, p.last_content_delta) == (CONTENT, "final", None)
    p.process(tok.encode("Hi")[0])
    assert (p.current_content, p.last_content_delta) == ("Hi", "Hi")
    p.process(END)
    assert (p.state, p.current_role, p.current_content, len(p.messages)) == (
        EXPECT_START, None, "", 1)
    p.process_eos()  # end of stream while expecting a start is fine
    assert p.tokens[-1] == END and len(p.messages) == 1


def test_eos_finishes_content(tok):
    assert parse_messages(ids(tok, "<|channel|>final<|message|>4"), tok)[0].text == "4"


def test_emoji_split_across_tokens(tok):
    # 172, 253, 246, 222 are the single bytes F0 9F 98 80 (U+1F600).
    p, deltas = _stream(tok, [*ids(tok, "<|channel|>final<|message|>"), 172, 253, 246, 222])
    assert deltas[-4:] == [None, None, None, "\U0001F600"]
    assert p.current_content == "\U0001F600"


def test_cut_sequences_spec_example(tok):
    head = ids(tok, "<|channel|>final<|message|>")
    p, deltas = _stream(tok, [*head, 9552, 9552, *tok.encode("worked"), END])
    assert deltas[len(head):] == [" ", "\ufffd", " \ufffd", None]
    assert p.messages[0].text == " \ufffd \ufffdworked"
    tail = [9552, *tok.encode(" interesting"), *tok.encode(" story")]
    assert parse_messages([*head, *tail], tok)[0].text == " \ufffd interesting story"


def test_unknown_id_stays_pending(tok):
    head = ids(tok, "<|channel|>final<|message|>")
    p, deltas = _stream(tok, [*head, *tok.encode("a"), 300000, *tok.encode("b"), END])
    assert deltas[len(head):] == ["a", None, None, None]
    assert p.messages[0].text == "a\ufffd"


def test_special_ids_in_content_are_literal_text(tok):
    tokens = ids(tok, "<|channel|>final<|message|>a<|start|>b<|return|>")
    assert parse_messages(tokens, tok)[0].text == "a<|start|>b"


@pytest.mark.parametrize("text, role, error", [
    ("hello", None, "Unexpected token 24912 while expecting start token 200006"),
    ("", "assistant", "Unexpected EOS while waiting for message header to complete"),
    ("<|channel|>final", "assistant",
     "Unexpected EOS while waiting for message header to complete"),
    ("I must refuse<|end|><|start|>assistant<|channel|>final<|message|>No.<|return|>",
     "assistant", 'unexpected tokens remaining in message header: Some("I")'),
])
def test_parse_errors(tok, text, role, error):
    with pytest.raises(HarmonyError) as exc:
        parse_messages(ids(tok, text), tok, role=role)
    assert str(exc.value) == error


def test_header_decode_errors(tok):
    head = ids(tok, "<|channel|>final ")
    with pytest.raises(HarmonyError, match="^could not decode header$"):
        parse_messages([*head, 172, MESSAGE], tok)
    with pytest.raises(HarmonyError, match="^could not decode header$"):
        parse_messages([*head, 300000, MESSAGE], tok)
    with pytest.raises(HarmonyError, match="incomplete utf-8 byte sequence from index 17"):
        parse_messages([*head, 172, END], tok, strict=False)


def test_empty_completion_without_role(tok):
    assert parse_messages([], tok, role=None) == []


@pytest.mark.parametrize("text, expected", [
    ("I must refuse<|end|>", [("assistant", None, "I must refuse")]),
    ("<|channel|>commentary Hello   world\n again<|end|>",
     [("assistant", "commentary", "Hello world again")]),
    ('<|channel|>commentary to=functions.f {"a": 1}<|call|>',
     [("assistant", "commentary", 'to=functions.f {"a": 1}')]),
    ("I must refuse<|end|><|start|>assistant<|channel|>final<|message|>No.<|return|>",
     [("assistant", None, "I must refuse"), ("assistant", "final", "No.")]),
    (("<|channel|>final<|message|>ok<|end|><|start|>assistant<|channel|>final bad<|end|>"
      "<|start|>assistant<|channel|>final<|message|>ok2<|return|>"),
     [("assistant", "final", "ok"), ("assistant", "final", "ok2")]),
    ("<|end|><|start|>user<|message|>u<|end|>", [("user", None, "u")]),
])
def test_non_strict_recovery(tok, text, expected):
    msgs = parse_messages(ids(tok, text), tok, strict=False)
    assert [(m.role, m.channel, m.text) for m in msgs] == expected
    assert all(m.recipient is None and m.content_type is None for m in msgs)


def test_parsed_history_is_canonicalised_when_re_rendered(tok):
    sampled = ids(tok, "<|channel|>commentary to=functions.f<|constrain|>json"
                       '<|message|>{"a": 1}<|call|>')
    call = parse_messages(sampled, tok)[0]
    assert render_message(call, tok) == ids(
        tok, '<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json'
             '<|message|>{"a": 1}<|call|>')
    final = parse_messages(ids(tok, "<|channel|>final<|message|>A<|return|>"), tok)[0]
    assert render_message(final, tok)[-1] == END


# ---------------------------------------------------------------------------------------------
# data model: JSON round trip and builders
# ---------------------------------------------------------------------------------------------


def test_json_round_trip(tok):
    convo = [
        system_message(conversation_start_date="2025-06-28", reasoning_effort="high",
                       tools=["browser", ToolNamespace("python", "custom")]),
        developer_message(instructions="Be brief.", function_tools=[WEATHER_TOOL],
                          namespaces=[ToolNamespace("extra", "x", [ToolDescription("t")])],
                          response_formats=[ResponseFormat("r", {"type": "object"}, "R")]),
        Message("user", ["a", "b"], name="bob"),
        Message("assistant", "{}", channel="commentary", recipient="functions.get_current_weather",
                content_type="<|constrain|>json"),
        Message("tool", "20", name="functions.get_current_weather", recipient="assistant",
                channel="commentary"),
    ]
    dicts = [m.to_dict() for m in convo]
    assert dicts[0]["tools"][0] == "browser"
    assert dicts[1]["tools"][0]["name"] == "get_current_weather"
    loaded = [Message.from_dict(d) for d in dicts]
    assert loaded == convo
    assert render_conversation(loaded, tok) == render_conversation(convo, tok)


def test_builders_match_case_schema(tok):
    built = [system_message(model_identity="You are a helpful pirate.", knowledge_cutoff=None,
                            reasoning_effort=None, channel_required=False),
             developer_message(function_tools=[ToolDescription("ping", "Ping.")])]
    from_cases = [Message.from_dict({"role": "system", "model_identity": "You are a helpful pirate.",
                                     "knowledge_cutoff": None, "reasoning_effort": None,
                                     "channel_required": False}),
                  Message.from_dict({"role": "developer",
                                     "tools": [{"name": "ping", "description": "Ping."}]})]
    assert built == from_cases


@pytest.mark.parametrize("bad, error", [
    ({"role": "robot"}, "role"),
    ({"role": "user", "content": 3}, "content"),
    ({"role": "system", "valid_channels": "final"}, "valid_channels"),
    ({"role": "developer", "tools": [{"description": "no name"}]}, "name"),
    ("not a dict", "JSON object"),
])
def test_from_dict_errors(bad, error):
    with pytest.raises(HarmonyError, match=error):
        Message.from_dict(bad)
