"""The one exception type of the harmony layer (render and parse failures, HARMONY.md §2, §13.7).

Messages follow openai-harmony 0.0.8's wording so tests can compare them with the oracle's.
"""

from __future__ import annotations

from ..errors import OssrunError


class HarmonyError(OssrunError, ValueError):
    """A conversation cannot be rendered, or model output cannot be parsed, as harmony."""
