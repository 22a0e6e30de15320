"""Answers as they come: one stream of requests through a backend, and saving what came back as it goes.

vLLM keeps every request of a call in flight (continuous batching), so handing a whole job over at once
avoids the idle tail each chunk of a chunked loop ends with; the stages that generate (evaluation,
distillation) save the answers as they arrive, so a crash or Ctrl-C loses at most a few seconds of them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

if TYPE_CHECKING:
    from sdft.generation import GenerationParams

Item = TypeVar("Item")

# A stream saves what came back when an answer arrives this long after its last save: one write per answer
# would make the engine wait on the disk.
SAVE_EVERY_S = 2.0


def runs(requests: list[tuple[str, GenerationParams]], chunk: int, groups: list | None = None):
    """``(start, end)`` of consecutive requests with equal params and group, at most ``chunk`` long: the batches
    of one ``generate`` call each."""
    start = 0
    while start < len(requests):
        end = start + 1
        while (end < len(requests) and end - start < chunk and requests[end][1] == requests[start][1]
               and (groups is None or groups[end] == groups[start])):
            end += 1
        yield start, end
        start = end


def streams(backend) -> bool:
    """Whether ``backend`` keeps requests of one call in flight together (has ``generate_stream``: vLLM)."""
    return callable(getattr(backend, "generate_stream", None))


def stream(backend, requests: list[tuple[str, GenerationParams]], chunk: int, groups: list | None = None):
    """``(index, completion)`` for every ``(prompt, params)`` request, as answers are ready. A backend with a
    ``generate_stream`` gets them all at once; any other one ``generate`` call per run of :func:`runs` (the
    batches a caller handing each group over alone, in chunks, would have made)."""
    if streams(backend):
        yield from backend.generate_stream(requests, groups)
        return
    for start, end in runs(requests, chunk, groups):
        completions = backend.generate([prompt for prompt, _ in requests[start:end]], requests[start][1])
        yield from enumerate(completions, start)


def saved_as_they_come(items: Iterable[Item], save: Callable[[list[Item]], None],
                       every_s: float = SAVE_EVERY_S) -> Iterator[Item]:
    """Yield each of ``items`` and hand those not yet saved to ``save`` once ``every_s`` seconds have passed
    since the last save, and at the end, also when the caller stops early (an error, Ctrl-C): what came back is
    kept. Read it inside ``contextlib.closing`` so that an early stop saves at once, and closes ``items`` when
    it is a generator (a vLLM stream then aborts its unfinished requests)."""
    unsaved: list[Item] = []
    last = time.monotonic()
    try:
        for item in items:
            unsaved.append(item)
            yield item
            if time.monotonic() - last >= every_s:
                save(unsaved)
                unsaved, last = [], time.monotonic()
    finally:
        if unsaved:
            save(unsaved)
        close = getattr(items, "close", None)
        if callable(close):
            close()
