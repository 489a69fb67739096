"""Loads a source into torch with transformers (blocking: the slot manager calls it in a thread).

A GGUF is de-quantized by transformers (`gguf_file=`, which needs `accelerate`); a checkpoint directory loads as is.
torch and transformers are imported here, on the first load, never when the service starts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from services.inference_fallback import devices
from services.inference_fallback.devices import DevicePlan
from services.inference_fallback.sources import Source

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    """A loaded model and its tokenizer, with what it took."""

    model: Any
    tokenizer: Any
    memory_bytes: int
    load_s: float
    context_length: int | None
    offloaded: bool = False


def load(
    source: Source, plan: DevicePlan, max_memory: dict[Any, int] | None = None, max_seq_length: int = 2048
) -> Loaded:
    """Load `source` on `plan`'s device in its dtype. `max_memory` (CUDA only) turns on accelerate's
    `device_map="auto"` with those caps, so layers beyond the GPU's share stay on the CPU (the offload threshold).
    The `unsloth_cuda` path loads the checkpoint 4-bit with Unsloth instead (whole on the GPU: no offload)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    started = time.perf_counter()
    if plan.path == "unsloth_cuda":  # choose_path never picks it for a GGUF
        model, tokenizer = devices.load_unsloth(source.location, max_seq_length=max_seq_length, dtype=plan.dtype)
        offloaded = False
    else:
        directory, extra = source.location, {}
        if source.gguf:
            directory, extra = source.location.parent, {"gguf_file": source.location.name}
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, **extra)
        kwargs: dict[str, Any] = {"dtype": getattr(torch, plan.dtype), "local_files_only": True, **extra}
        offloaded = plan.cuda and max_memory is not None
        if offloaded:
            kwargs.update(device_map="auto", max_memory=max_memory)
        elif plan.cuda:
            kwargs["device_map"] = plan.device
        model = AutoModelForCausalLM.from_pretrained(directory, **kwargs)
        if not plan.cuda:
            model.to(plan.device)  # type: ignore[arg-type]
    model.eval()
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "max_position_embeddings", None)
    loaded = Loaded(
        model=model,
        tokenizer=tokenizer,
        memory_bytes=int(model.get_memory_footprint()),
        load_s=round(time.perf_counter() - started, 3),
        context_length=int(context) if isinstance(context, int) else None,
        offloaded=offloaded,
    )
    log.info(
        "loaded %s on %s (%s, %s) in %.2fs: %d bytes%s", source.description, plan.device, plan.path, plan.dtype,
        loaded.load_s, loaded.memory_bytes, " (offloaded to CPU past the threshold)" if offloaded else "",
    )  # fmt: skip
    return loaded
