"""The queue in front of the one model: one call at a time; waiting non-streaming requests with equal settings
share a call. bench/bench_serve.py measures what the sharing buys.

    python bench/bench_serve.py --requests 32 --max-tokens 32
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from dataclasses import dataclass, field, replace

from writemypaper.settings import GenerationSettings
from writemypaper.serve.errors import ApiError
from writemypaper.serve.limits import Limits
from writemypaper.serve.stops import StopScanner, cut_at_stop

log = logging.getLogger("writemypaper.serve")

END = object()  # the last item a streaming job's `pieces` queue receives


@dataclass(eq=False)
class Job:
    summary: str
    settings: GenerationSettings
    stream: bool = False
    # non-streaming: (texts, prompt_tokens, completion_tokens per text, whether each ended at a stop string)
    future: asyncio.Future | None = None
    # streaming: text pieces, then (prompt_tokens, completion_tokens, ended at a stop string), then END
    pieces: asyncio.Queue | None = None
    stop: tuple[str, ...] = ()  # the request's stop strings: each text ends before the first one
    cancelled: threading.Event = field(default_factory=threading.Event)  # read by the model's thread


def _shared(settings: GenerationSettings) -> GenerationSettings:
    """What the jobs of one model call must have in common: every setting but the target length."""
    return replace(settings, target_chars=None)


class Scheduler:
    """Admits up to `queue_depth` requests (waiting or being written; more get a 429) and feeds them to the
    model one call at a time. A non-streaming request takes with it the waiting ones with equal settings, up to
    `max_batch_size` sequences, into one engine.generate call (settings that differ in target_chars alone count as
    equal: each row is steered to its own). A streaming request has the model to itself."""

    def __init__(self, generator, limits: Limits):
        self.generator, self.limits = generator, limits
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.active = 0
        self.stats = {"requests": 0, "model_calls": 0, "largest_batch": 0}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def submit(self, jobs: list[Job]) -> None:
        if self.active + len(jobs) > self.limits.queue_depth:
            raise ApiError(429, f"the server is busy: {self.active} requests are queued (limit "
                                f"{self.limits.queue_depth}); retry in a moment", code="queue_full",
                           type="rate_limit_error")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._work())
        self.active += len(jobs)
        self.stats["requests"] += len(jobs)
        self.waiting.extend(jobs)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, stop the model at its next token if it runs."""
        job.cancelled.set()
        if job in self.waiting:
            self.waiting.remove(job)
            self.active -= 1

    async def close(self) -> None:
        for job in [*self.waiting, *self.running]:
            job.cancelled.set()
        if self._task is not None:
            self._task.cancel()

    def _take_batch(self, first: Job) -> list[Job]:
        batch, size = [first], first.settings.rows_per_summary
        for job in list(self.waiting):
            n, same = job.settings.rows_per_summary, _shared(job.settings) == _shared(first.settings)
            if not job.stream and same and size + n <= self.limits.max_batch_size:
                self.waiting.remove(job)
                batch.append(job)
                size += n
        return batch

    async def _work(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self.waiting.popleft()
            batch = [first] if first.stream else self._take_batch(first)
            self.running = batch
            self.stats["model_calls"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                await (self._stream(first) if first.stream else self._generate(batch))
            finally:
                self.running = []
                self.active -= len(batch)

    def _count(self, text: str) -> int:
        return len(self.generator.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_tokens(self, summary: str) -> int:
        return len(self.generator.encode(summary))  # the engine's own prompt: a GGUF renders its own template

    async def _generate(self, batch: list[Job]) -> None:
        settings = batch[0].settings

        def gone() -> bool:
            return all(j.cancelled.is_set() for j in batch)

        def run():
            # Tokenizer work stays on this one thread: a fast tokenizer used from two threads at once can fail.
            # A client that leaves ends its own row (cancelled); the batch stops only once every row's client is gone.
            targets = [j.settings.target_chars for j in batch]
            per_row = {"targets": targets} if any(t is not None for t in targets) else {}
            outs = self.generator.generate([j.summary for j in batch], settings, batch_size=len(batch), stop=gone,
                                           cancelled=lambda i: batch[i].cancelled.is_set(), **per_row)
            results = []
            for j, texts in zip(batch, outs):
                cut = [cut_at_stop(t, j.stop) for t in texts]
                texts = [t.strip() for t, _ in cut]
                results.append((texts, self._prompt_tokens(j.summary), [self._count(t) for t in texts],
                                [hit for _, hit in cut]))
            return results

        try:
            results = await asyncio.to_thread(run)
        except Exception as e:  # the requests fail, the server lives on
            log.exception("generation failed")
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        for j, result in zip(batch, results):
            if not j.future.done():
                j.future.set_result(result)

    async def _stream(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def run():
            text, scan = [], StopScanner(job.stop)

            def send(out: str) -> None:
                if out and not job.cancelled.is_set():
                    text.append(out)
                    loop.call_soon_threadsafe(job.pieces.put_nowait, out)

            # A cancelled job keeps draining the stream: the stopping criterion ends it within a token, and the
            # next job must not start while this generation thread still holds the tokenizer. A stop string ends
            # the generation the same way.
            for piece in self.generator.stream(job.summary, job.settings,
                                               stop=lambda: job.cancelled.is_set() or scan.stopped):
                if piece:
                    send(scan.feed(piece))
            send(scan.flush())
            return self._prompt_tokens(job.summary), self._count("".join(text).strip()), scan.stopped

        try:
            job.pieces.put_nowait(await asyncio.to_thread(run))
        except Exception as e:
            log.exception("streaming generation failed")
            job.pieces.put_nowait(e)
        job.pieces.put_nowait(END)
