"""Rendering messages and conversations to token ids (HARMONY.md §3–§6, §11).

Each piece of §3 is encoded on its own with ordinary BPE (never special ids) and the id lists
are concatenated (§1.5 rule 2); special tokens are looked up by name.
"""

from __future__ import annotations

import json

from .errors import HarmonyError
from .messages import ROLES, DeveloperContent, Message, SystemContent, ToolNamespace
from .schema_ts import schema_to_typescript
from .tokens import special_tokens

RENDER_MODES = ("completion", "conversation", "training")
CONSTRAIN_MARKER = "<|constrain|>"


def stop_token_ids(tokenizer) -> list[int]:
    """Sampling stops: <|return|> and <|call|> (the oracle's stop tokens for assistant actions)."""
    s = special_tokens(tokenizer)
    return sorted((s.return_, s.call))


def terminator_token_ids(tokenizer) -> list[int]:
    """Message terminators the parser accepts: <|return|>, <|end|>, <|call|> (HARMONY.md §12)."""
    return sorted(special_tokens(tokenizer).terminators)


def description_lines(text: str) -> list[str]:
    """Rust `str::lines`: split after each \\n (dropping a \\r before it); no empty last line."""
    *cut, last = text.split("\n")
    lines = [line.removesuffix("\r") for line in cut]
    if last:
        lines.append(last)
    return lines


def tools_section(namespaces: dict[str, ToolNamespace]) -> str:
    """The `# Tools` section of §6; namespaces are visited in ascending order of their names."""
    sections = ["# Tools"]
    for _, ns in sorted(namespaces.items()):
        lines = [f"## {ns.name}\n"]
        if ns.description is not None:
            prefix = "// " if ns.tools else ""
            lines.extend(prefix + line for line in description_lines(ns.description))
        if ns.tools:
            lines.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                lines.extend("// " + line for line in description_lines(tool.description))
                if tool.parameters is None:
                    lines.append(f"type {tool.name} = () => any;\n")
                else:
                    params = schema_to_typescript(tool.parameters, "")
                    lines.append(f"type {tool.name} = (_: {params}) => any;\n")
            lines.append(f"}} // namespace {ns.name}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def system_text(sc: SystemContent, conversation_has_function_tools: bool = False) -> str:
    """The system message text of §4 (identity, reasoning, tools, channels)."""
    sections = []
    identity = [sc.model_identity] if sc.model_identity is not None else []
    if sc.knowledge_cutoff is not None:
        identity.append(f"Knowledge cutoff: {sc.knowledge_cutoff}")
    if sc.conversation_start_date is not None:
        identity.append(f"Current date: {sc.conversation_start_date}")
    if identity:
        sections.append("\n".join(identity))
    if sc.reasoning_effort is not None:
        sections.append(f"Reasoning: {sc.reasoning_effort}")
    if sc.tools:
        sections.append(tools_section(sc.tools))
    if sc.valid_channels:
        channels = f"# Valid channels: {', '.join(sc.valid_channels)}."
        if sc.channel_required:
            channels += " Channel must be included for every message."
        if conversation_has_function_tools:
            channels += "\nCalls to these tools must go to the commentary channel: 'functions'."
        sections.append(channels)
    return "\n\n".join(sections)


def developer_text(dc: DeveloperContent) -> str:
    """The developer message text of §5 (instructions and tools; response formats not included)."""
    sections = []
    if dc.instructions is not None:
        sections += ["# Instructions", dc.instructions]
    if dc.tools:
        sections.append(tools_section(dc.tools))
    return "\n\n".join(sections)


def response_formats_text(dc: DeveloperContent) -> str:
    """The `# Response Formats` piece of §5.1 ('' when there are none)."""
    if not dc.response_formats:
        return ""
    blocks = []
    for f in dc.response_formats:
        block = f"## {f.name}\n\n"
        if f.description:
            block += f"// {f.description}\n"
        blocks.append(block + json.dumps(f.schema, ensure_ascii=False, separators=(",", ":")))
    text = "# Response Formats\n\n" + "\n\n".join(blocks)
    has_developer_text = dc.instructions is not None or bool(dc.tools)
    return "\n\n" + text if has_developer_text else text


def render_message(message: Message, tokenizer, *,
                   conversation_has_function_tools: bool = False) -> list[int]:
    """Token ids of one message (§3). The flag adds the 'functions' line to a system message."""
    s = special_tokens(tokenizer)
    out = [s.start]

    def piece(text: str) -> None:
        out.extend(tokenizer.encode(text))

    if message.role == "tool":
        if message.name is None:
            raise HarmonyError("Tools should have a name!")
        piece(message.name)
    else:
        piece(message.role)
        if message.name is not None:
            piece(":" + message.name)
    if message.recipient is not None and message.recipient != "all":
        piece(" to=" + message.recipient)
    if message.channel is not None:
        out.append(s.channel)
        piece(message.channel)
    if message.content_type is not None:
        if message.content_type.startswith(CONSTRAIN_MARKER):
            piece(" ")
            out.append(s.constrain)
            piece(message.content_type[len(CONSTRAIN_MARKER):])
        else:
            piece(" " + message.content_type)
    out.append(s.message)
    for part in message.content:
        if isinstance(part, SystemContent):
            if message.role != "system":
                raise HarmonyError(
                    "SystemContent may only appear in system messages, "
                    f"found in {message.role.capitalize()}")  # Rust's Debug name, e.g. User
            piece(system_text(part, conversation_has_function_tools))
        elif isinstance(part, DeveloperContent):
            if message.role != "developer":
                raise HarmonyError("DeveloperContent may only appear in developer messages, "
                                   f"found in {message.role.capitalize()}")
            piece(developer_text(part))
            piece(response_formats_text(part))
        else:
            piece(part)
    # Quirk: recipient "all" is not written but the message still ends with <|call|>.
    out.append(s.call if message.role == "assistant" and message.recipient is not None else s.end)
    return out


def _kept_messages(messages: list[Message], auto_drop_analysis: bool) -> list[Message]:
    """Drop analysis before the first final when the last assistant message is final (§11.4)."""
    last_assistant = next((m for m in reversed(messages) if m.role == "assistant"), None)
    if not (auto_drop_analysis and last_assistant is not None
            and last_assistant.channel == "final"):
        return list(messages)
    first_final = next(i for i, m in enumerate(messages) if m.channel == "final")
    return [m for i, m in enumerate(messages) if not (i < first_final and m.channel == "analysis")]


def render_conversation(messages, tokenizer, *, mode: str = "completion",
                        next_role: str = "assistant", auto_drop_analysis: bool = True) -> list[int]:
    """Token ids of a conversation (§11).

    mode "completion" appends `<|start|>` + next_role for sampling; "conversation" renders the
    messages only; "training" also ends a last assistant `final` message with `<|return|>`.
    Analysis before the first final is dropped per §11.4 unless auto_drop_analysis is false.
    """
    if mode not in RENDER_MODES:
        raise HarmonyError(f"unknown render mode {mode!r} (expected one of {RENDER_MODES})")
    messages = list(messages)
    has_function_tools = any(isinstance(p, DeveloperContent) and p.has_function_tools
                             for m in messages for p in m.content)
    out: list[int] = []
    for m in _kept_messages(messages, auto_drop_analysis):
        out += render_message(m, tokenizer, conversation_has_function_tools=has_function_tools)
    s = special_tokens(tokenizer)
    if mode == "completion":
        if next_role not in ROLES:
            raise HarmonyError(f"unknown next_role {next_role!r}")
        out += [s.start] + tokenizer.encode(next_role)
    elif mode == "training" and out and messages[-1].role == "assistant" \
            and messages[-1].channel == "final":
        out[-1] = s.return_
    return out
