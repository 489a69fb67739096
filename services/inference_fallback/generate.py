"""One generation on a loaded slot: the checkpoint's chat template, transformers' `generate()` in its own thread,
text deltas handed to the event loop as they decode, stop strings, and a stop when the caller goes away."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.fallback import AdapterManifest, ChatMessage, FinishReason
from contracts.rpc import RpcError
from services.inference_fallback import domain
from services.inference_fallback.adapters import AdapterSet
from services.inference_fallback.loader import Loaded

#: Threads of generations still running, by name; tests and health read it (a cancelled one leaves it at once).
RUNNING: set[threading.Thread] = set()
_SEED_LOCK = threading.Lock()  # torch's global RNG: a seeded generation holds it while it seeds and samples


def prompt_ids(loaded: Loaded, messages: Sequence[ChatMessage], max_seq_length: int) -> Any:
    """The prompt as token ids, through the checkpoint's chat template (a plain `role: text` transcript when it has
    none); a prompt of `max_seq_length` tokens or more is a 413 naming the limit."""
    tokenizer = loaded.tokenizer
    chat = [{"role": m.role, "content": m.content} for m in messages]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in chat) + "assistant: "
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    if ids.shape[-1] >= max_seq_length:
        raise RpcError(
            413,
            f"messages: the prompt is {ids.shape[-1]} tokens; this slot's max_seq_length is {max_seq_length}",
            code="prompt_too_long",
            field="messages",
        )
    return ids


@dataclass
class Outcome:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: FinishReason = "length"


class Generation:
    """Runs `generate()` in a thread; `deltas()` yields `(text, tokens)` as they decode. Closing the iterator early
    (the caller cancelled) stops the thread at its next token and waits for it. The model comes from `adapters`,
    with `adapter` active (None: every adapter off); an `AdapterError` from it ends `deltas()`."""

    def __init__(
        self,
        loaded: Loaded,
        ids: Any,
        sampling: domain.Sampling,
        max_seq_length: int,
        *,
        adapters: AdapterSet,
        adapter: AdapterManifest | None = None,
    ) -> None:
        self.loaded, self.ids, self.sampling = loaded, ids, sampling
        self.adapters, self.adapter = adapters, adapter
        self.budget = max(1, min(sampling.max_new_tokens, max_seq_length - int(ids.shape[-1])))
        self.outcome = Outcome(prompt_tokens=int(ids.shape[-1]))
        self.cancelled = threading.Event()
        self.stopped = threading.Event()  # a stop string was seen
        self.thread: threading.Thread | None = None
        self._error: BaseException | None = None

    async def deltas(self) -> AsyncGenerator[tuple[str, int]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        streamer = _Streamer(self, lambda item: loop.call_soon_threadsafe(queue.put_nowait, item))
        self.thread = threading.Thread(target=self._run, args=(streamer,), name="fallback-generate", daemon=True)
        RUNNING.add(self.thread)
        self.thread.start()
        finished = False
        try:
            while (item := await queue.get()) is not None:
                yield item
            finished = True
            if self._error is not None:
                raise self._error
        finally:
            if not finished:
                self.cancelled.set()
                self.outcome.finish_reason = "cancelled"
            await asyncio.to_thread(self.thread.join, 60)
            RUNNING.discard(self.thread)

    def _run(self, streamer: _Streamer) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        generation = self

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                done = generation.cancelled.is_set() or generation.stopped.is_set()
                return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

        tokenizer = self.loaded.tokenizer
        kwargs = self.sampling.generate_kwargs()
        kwargs["max_new_tokens"] = self.budget
        try:
            # using() may wait for the slot's generations with another adapter, then loads or switches this one
            with self.adapters.using(self.adapter) as model, torch.inference_mode(), _seeded(self.sampling.seed):
                ids = self.ids.to(model.device)
                model.generate(
                    input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([_Stop()]), pad_token_id=tokenizer.pad_token_id, **kwargs,
                )  # fmt: skip
        except BaseException as exc:  # handed to the event loop: the stream ends with the error
            self._error = exc
            streamer.flush_end()
        else:
            streamer.finish()


class _seeded:
    """Seeds torch's global RNG for one generation (and holds the lock so another seeded one cannot reseed)."""

    def __init__(self, seed: int | None) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        if self.seed is not None:
            import torch

            _SEED_LOCK.acquire()
            torch.manual_seed(self.seed & 0xFFFF_FFFF_FFFF_FFFF)

    def __exit__(self, *exc: object) -> None:
        if self.seed is not None:
            _SEED_LOCK.release()


class _Streamer:
    """generate()'s streamer: decodes the new tokens, holds back text that may begin a stop string, cuts at a stop
    string, and counts tokens and the finish reason."""

    def __init__(self, generation: Generation, send: Any) -> None:
        self.g, self.send = generation, send
        self.tokenizer = generation.loaded.tokenizer
        self.eos = _eos_ids(generation.loaded)
        self.tokens: list[int] = []
        self.sent = 0  # characters of the decoded text already sent
        self.pending = 0  # tokens decoded into text not yet sent
        self.prompt_seen = False
        self.saw_eos = False
        self.done = False

    def put(self, value: Any) -> None:
        if not self.prompt_seen:  # generate() pushes the prompt first
            self.prompt_seen = True
            return
        if self.done:
            return
        for token in value.reshape(-1).tolist():
            self.g.outcome.completion_tokens += 1
            if token in self.eos:
                self.saw_eos = True
                continue
            self.tokens.append(int(token))
            self.pending += 1
        self._emit(final=False)

    def _emit(self, *, final: bool) -> None:
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        stops = self.g.sampling.stop
        cut = domain.stop_at(text, stops) if stops else None
        if cut is not None and cut >= self.sent:
            self._send(text[self.sent : cut])
            self.g.stopped.set()
            self.done = True
            return
        end = len(text) if final else len(text) - domain.held_back(text, stops)
        if end > self.sent:
            self._send(text[self.sent : end])

    def _send(self, piece: str) -> None:
        if piece:
            self.send((piece, self.pending))
            self.sent += len(piece)
            self.pending = 0

    def end(self) -> None:
        """Called by generate() when it returns; the outcome is settled in finish()."""

    def finish(self) -> None:
        if not self.done:
            self._emit(final=True)
        o = self.g.outcome
        if self.g.cancelled.is_set():
            o.finish_reason = "cancelled"
        elif self.g.stopped.is_set() or self.saw_eos:
            o.finish_reason = "stop"
        else:
            o.finish_reason = "length"
        self.flush_end()

    def flush_end(self) -> None:
        self.send(None)


def _eos_ids(loaded: Loaded) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(loaded.model.generation_config, "eos_token_id", None), loaded.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids
