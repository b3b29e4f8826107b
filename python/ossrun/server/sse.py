"""Server-sent events framing, stop strings held back across deltas, token logprob records."""

from __future__ import annotations

import json

from fastapi.responses import StreamingResponse

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(data, event: str | None = None) -> str:
    """One event: optional `event:` line, one `data:` line (compact JSON or a literal), blank."""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (f"event: {event}\n" if event else "") + f"data: {body}\n\n"


def event_stream(chunks) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream", headers=SSE_HEADERS)


def stop_list(stop) -> list[str]:
    from .errors import APIError

    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4 or any(not s for s in stops):
        raise APIError(400, "Invalid value for 'stop': up to 4 non-empty strings.", param="stop")
    return stops


class StopMatcher:
    """Cuts text at the first stop string; while streaming, holds back a tail that could still
    become one, so no part of a stop string is ever sent."""

    def __init__(self, stops: list[str]):
        self.stops = stops
        self.held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        buf = self.held + text
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.held = True, ""
            return buf[:cut]
        keep = max((k for s in self.stops for k in range(1, len(s)) if buf.endswith(s[:k])),
                   default=0)
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        out, self.held = ("" if self.stopped else self.held), ""
        return out


def token_record(tokenizer, token: int, logprob: float) -> dict:
    data = tokenizer.decode_bytes([token])
    return {"token": data.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(data)}


def chat_logprobs(tokenizer, event) -> dict:
    """One entry of Chat Completions' logprobs.content (top_logprobs likeliest first)."""
    rec = token_record(tokenizer, event.token, event.logprob)
    rec["top_logprobs"] = [token_record(tokenizer, t, lp) for t, lp in event.top or []]
    return rec
