"""The harmony prompt format of gpt-oss: rendering and streaming parsing (shared/spec/HARMONY.md).

Pure Python, byte-exact with openai-harmony 0.0.8 (the normative reference). Everything takes an
`ossrun.tokenizer.Tokenizer`; special tokens are looked up by name.

    from ossrun.harmony import Message, system_message, render_conversation, StreamParser
    ids = render_conversation([system_message(), Message("user", "Hi")], tok)
"""

from .errors import HarmonyError
from .messages import (
    DEFAULT_CHANNELS,
    DEFAULT_KNOWLEDGE_CUTOFF,
    DEFAULT_MODEL_IDENTITY,
    REASONING_EFFORTS,
    ROLES,
    DeveloperContent,
    Message,
    ResponseFormat,
    SystemContent,
    ToolDescription,
    ToolNamespace,
    developer_message,
    system_message,
)
from .parse import CONTENT, EXPECT_START, HEADER, StreamParser, parse_header, parse_messages
from .render import (
    render_conversation,
    render_message,
    stop_token_ids,
    terminator_token_ids,
)
from .schema_ts import schema_to_typescript

__all__ = [
    "CONTENT", "DEFAULT_CHANNELS", "DEFAULT_KNOWLEDGE_CUTOFF", "DEFAULT_MODEL_IDENTITY",
    "EXPECT_START", "HEADER", "REASONING_EFFORTS", "ROLES", "DeveloperContent", "HarmonyError",
    "Message", "ResponseFormat", "StreamParser", "SystemContent", "ToolDescription",
    "ToolNamespace", "developer_message", "parse_header", "parse_messages",
    "render_conversation", "render_message", "schema_to_typescript", "stop_token_ids",
    "system_message", "terminator_token_ids",
]
