"""How long, how far: durations as text, and when a long loop says how far it is (the image check, an evaluation,
ImageNet's preparation, training's progress line)."""
import time


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Ticker:
    """When a long loop says how far it is (the image check, an evaluation, ImageNet's preparation): ``due()`` is
    True once every ``seconds``; ``elapsed()`` counts from the start."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = self.last = time.time()

    def due(self) -> bool:
        now = time.time()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True

    def elapsed(self) -> float:
        return time.time() - self.start
