"""The `stop` parameter: the text the client sees ends before the first stop string, whether it comes whole or in
pieces as the model writes it.

    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "요약..."}], "stop": ["\\n"]}'
"""

from __future__ import annotations


def cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to its earliest stop string, and whether one was found."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text, False) if at < 0 else (text[:at], True)


class StopScanner:
    """Pieces in, the text safe to send out: it holds back a tail that could still become a stop string, so a stop
    split across two pieces is never sent in part. Leading whitespace is dropped, as the non-streaming text is
    stripped; `stopped` turns true at the first stop string, and nothing is sent after it."""

    def __init__(self, stops: tuple[str, ...] = ()):
        self.stops, self.held, self.begun, self.stopped = stops, "", False, False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.begun:
            piece = piece.lstrip()
            self.begun = bool(piece)
        text, self.stopped = cut_at_stop(self.held + piece, self.stops)
        if self.stopped:
            self.held = ""
            return text
        keep = self._partial(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        """What is still held back once the model has finished."""
        out, self.held = self.held, ""
        return out

    def _partial(self, text: str) -> int:
        """The length of the longest tail of `text` that begins some stop string."""
        for n in range(min(len(text), max((len(s) for s in self.stops), default=1) - 1), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stops):
                return n
        return 0
