"""The model reference table (docs/model-references.md): every spelling the catalog or the provisioner meets."""

from __future__ import annotations

import pytest

from contracts.model_ref import ModelRef, ModelRefError, parse_model_ref
from contracts.provisioner import pinned_hf_ref, pinned_ollama_name

pytestmark = pytest.mark.unit
SHA = "0123456789abcdef0123456789abcdef01234567"
BART = "bartowski/Llama-3.2-3B-Instruct-GGUF"
MRAD = "mradermacher/Llama-3.3-70B-Instruct-GGUF"

# (spelling, kind, canonical, ollama name on a host, repo, quant, revision, provision, source)
TABLE = [
    # Ollama library and namespaced models: no tag means :latest on the host
    ("qwen3", "ollama", "qwen3", "qwen3:latest", None, None, None, "ollama_pull", "curated"),
    ("qwen3:8b", "ollama", "qwen3:8b", "qwen3:8b", None, None, None, "ollama_pull", "curated"),
    ("  qwen3:8b\n", "ollama", "qwen3:8b", "qwen3:8b", None, None, None, "ollama_pull", "curated"),
    ("qwen3:30b-a3b", "ollama", "qwen3:30b-a3b", "qwen3:30b-a3b", None, None, None, "ollama_pull", "curated"),
    ("qwen3-coder:30b", "ollama", "qwen3-coder:30b", "qwen3-coder:30b", None, None, None, "ollama_pull", "curated"),
    ("llama3.2:3b", "ollama", "llama3.2:3b", "llama3.2:3b", None, None, None, "ollama_pull", "curated"),
    ("qwen2.5vl:7b", "ollama", "qwen2.5vl:7b", "qwen2.5vl:7b", None, None, None, "ollama_pull", "curated"),
    ("nomic-embed-text", "ollama", "nomic-embed-text", "nomic-embed-text:latest", None, None, None, "ollama_pull",
     "curated"),
    ("nomic-embed-text-v2-moe", "ollama", "nomic-embed-text-v2-moe", "nomic-embed-text-v2-moe:latest", None, None,
     None, "ollama_pull", "curated"),
    ("broken:1b", "ollama", "broken:1b", "broken:1b", None, None, None, "ollama_pull", "curated"),
    ("no-such-model:7b", "ollama", "no-such-model:7b", "no-such-model:7b", None, None, None, "ollama_pull", "curated"),
    ("bad", "ollama", "bad", "bad:latest", None, None, None, "ollama_pull", "curated"),
    ("library/qwen3:8b", "ollama", "library/qwen3:8b", "library/qwen3:8b", None, None, None, "ollama_pull",
     "curated"),
    ("library/llama3.2:3b-instruct-q4_K_M", "ollama", "library/llama3.2:3b-instruct-q4_K_M",
     "library/llama3.2:3b-instruct-q4_K_M", None, None, None, "ollama_pull", "curated"),
    ("acme/coder:1b", "ollama", "acme/coder:1b", "acme/coder:1b", None, None, None, "ollama_pull", "curated"),
    ("acme/coder:1.5b-q4_K_M", "ollama", "acme/coder:1.5b-q4_K_M", "acme/coder:1.5b-q4_K_M", None, None, None,
     "ollama_pull", "curated"),
    ("registry.ollama.ai/library/llama3.2:3b", "ollama", "registry.ollama.ai/library/llama3.2:3b",
     "registry.ollama.ai/library/llama3.2:3b", None, None, None, "ollama_pull", "curated"),
    ("example.com:5000/team/m:v2", "ollama", "example.com:5000/team/m:v2", "example.com:5000/team/m:v2", None, None,
     None, "ollama_pull", "curated"),
    # GGUF repos Ollama pulls itself, unpinned: the quant normalised, none means Ollama's default
    (f"hf.co/{BART}:Q4_K_M", "hf_gguf", f"hf.co/{BART}:Q4_K_M", f"hf.co/{BART}:Q4_K_M", BART, "Q4_K_M", None,
     "ollama_pull", "custom_hf"),
    (f"hf.co/{BART}:q4_k_m", "hf_gguf", f"hf.co/{BART}:Q4_K_M", f"hf.co/{BART}:Q4_K_M", BART, "Q4_K_M", None,
     "ollama_pull", "custom_hf"),
    ("hf.co/bartowski/Some-Model-GGUF:q5_k_m", "hf_gguf", "hf.co/bartowski/Some-Model-GGUF:Q5_K_M",
     "hf.co/bartowski/Some-Model-GGUF:Q5_K_M", "bartowski/Some-Model-GGUF", "Q5_K_M", None, "ollama_pull", "custom_hf"),
    ("hf.co/u/r-GGUF:Q4_K_M", "hf_gguf", "hf.co/u/r-GGUF:Q4_K_M", "hf.co/u/r-GGUF:Q4_K_M", "u/r-GGUF", "Q4_K_M", None,
     "ollama_pull", "custom_hf"),
    (f"hf.co/{MRAD}", "hf_gguf", f"hf.co/{MRAD}", f"hf.co/{MRAD}:latest", MRAD, None, None, "ollama_pull",
     "custom_hf"),
    (f"hf.co/{MRAD}:latest", "hf_gguf", f"hf.co/{MRAD}", f"hf.co/{MRAD}:latest", MRAD, None, None, "ollama_pull",
     "custom_hf"),
    (f"HF.CO/{MRAD}:Q8_0", "hf_gguf", f"hf.co/{MRAD}:Q8_0", f"hf.co/{MRAD}:Q8_0", MRAD, "Q8_0", None, "ollama_pull",
     "custom_hf"),
    (f"huggingface.co/{MRAD}:Q8_0", "hf_gguf", f"hf.co/{MRAD}:Q8_0", f"hf.co/{MRAD}:Q8_0", MRAD, "Q8_0", None,
     "ollama_pull", "custom_hf"),
    ("hf.co/u/r:IQ3_XS", "hf_gguf", "hf.co/u/r:IQ3_XS", "hf.co/u/r:IQ3_XS", "u/r", "IQ3_XS", None, "ollama_pull",
     "custom_hf"),
    ("hf.co/u/r:q6_k_l", "hf_gguf", "hf.co/u/r:Q6_K_L", "hf.co/u/r:Q6_K_L", "u/r", "Q6_K_L", None, "ollama_pull",
     "custom_hf"),
    ("hf.co/unsloth/m-GGUF:UD-Q4_K_XL", "hf_gguf", "hf.co/unsloth/m-GGUF:UD-Q4_K_XL", "hf.co/unsloth/m-GGUF:UD-Q4_K_XL",
     "unsloth/m-GGUF", "UD-Q4_K_XL", None, "ollama_pull", "custom_hf"),
    (f"https://huggingface.co/{MRAD}:Q4_K_M", "hf_gguf", f"hf.co/{MRAD}:Q4_K_M", f"hf.co/{MRAD}:Q4_K_M", MRAD,
     "Q4_K_M", None, "ollama_pull", "custom_hf"),
    # pinned, verified GGUF imports, registered under the pinned name
    (f"hf.co/u/r-GGUF:Q8_0@{SHA}", "hf_gguf", f"hf.co/u/r-GGUF:Q8_0@{SHA}", f"hf.co/u/r-GGUF:Q8_0-{SHA[:12]}",
     "u/r-GGUF", "Q8_0", SHA, "gguf_import", "pinned_hf"),
    ("hf.co/u/r-GGUF:Q4_K_M@v1.0", "hf_gguf", "hf.co/u/r-GGUF:Q4_K_M@v1.0", "hf.co/u/r-GGUF:Q4_K_M-v1.0", "u/r-GGUF",
     "Q4_K_M", "v1.0", "gguf_import", "pinned_hf"),
    ("hf.co/u/r:Q4_K_M@v1", "hf_gguf", "hf.co/u/r:Q4_K_M@v1", "hf.co/u/r:Q4_K_M-v1", "u/r", "Q4_K_M", "v1",
     "gguf_import", "pinned_hf"),
    ("hf.co/acme/m-GGUF:Q4_K_M@main", "hf_gguf", "hf.co/acme/m-GGUF:Q4_K_M@main", "hf.co/acme/m-GGUF:Q4_K_M-main",
     "acme/m-GGUF", "Q4_K_M", "main", "gguf_import", "pinned_hf"),
    ("hf.co/u/r:q4_k_m@v1", "hf_gguf", "hf.co/u/r:Q4_K_M@v1", "hf.co/u/r:Q4_K_M-v1", "u/r", "Q4_K_M", "v1",
     "gguf_import", "pinned_hf"),
    ("hf.co/u/r:Q4_K_M@refs/pr/1", "hf_gguf", "hf.co/u/r:Q4_K_M@refs/pr/1", "hf.co/u/r:Q4_K_M-refs-pr-1", "u/r",
     "Q4_K_M", "refs/pr/1", "gguf_import", "pinned_hf"),
    # Hugging Face repositories: unpinned (nothing the provisioner fetches) and pinned checkpoints
    ("deepseek-ai/Janus-Pro-1B", "hf", "deepseek-ai/Janus-Pro-1B", None, "deepseek-ai/Janus-Pro-1B", None, None, None,
     None),
    ("unsloth/Qwen2.5-Omni-3B-GGUF", "hf", "unsloth/Qwen2.5-Omni-3B-GGUF", None, "unsloth/Qwen2.5-Omni-3B-GGUF", None,
     None, None, None),
    (f"https://huggingface.co/{MRAD}", "hf", MRAD, None, MRAD, None, None, None, None),
    (f"https://hf.co/{MRAD}/", "hf", MRAD, None, MRAD, None, None, None, None),
    ("org/tiny-llama@v2", "hf", "org/tiny-llama@v2", None, "org/tiny-llama", None, "v2", "checkpoint", "pinned_hf"),
    ("acme/tiny-llama@v2", "hf", "acme/tiny-llama@v2", None, "acme/tiny-llama", None, "v2", "checkpoint",
     "pinned_hf"),
    ("Qwen/Qwen3-8B@v1.0", "hf", "Qwen/Qwen3-8B@v1.0", None, "Qwen/Qwen3-8B", None, "v1.0", "checkpoint", "pinned_hf"),
    (f"Qwen/Qwen3-8B@{SHA}", "hf", f"Qwen/Qwen3-8B@{SHA}", None, "Qwen/Qwen3-8B", None, SHA, "checkpoint",
     "pinned_hf"),
    ("Qwen/Qwen2.5-0.5B-Instruct@main", "hf", "Qwen/Qwen2.5-0.5B-Instruct@main", None, "Qwen/Qwen2.5-0.5B-Instruct",
     None, "main", "checkpoint", "pinned_hf"),
    (f"https://huggingface.co/{MRAD}@v1", "hf", f"{MRAD}@v1", None, MRAD, None, "v1", "checkpoint", "pinned_hf"),
    # files in the models directory
    ("local:models/tinyllama.Q4_K_M.gguf", "local", "local:models/tinyllama.Q4_K_M.gguf", None, None, None, None, None,
     "local"),
    ("local:tinyllama-1.1b-chat.Q4_K_M.gguf", "local", "local:tinyllama-1.1b-chat.Q4_K_M.gguf", None, None, None,
     None, None, "local"),
    ("LOCAL:x.gguf", "local", "local:x.gguf", None, None, None, None, None, "local"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "kind", "canonical", "ollama_name", "repo", "quant", "revision", "provision", "source"), TABLE
)
def test_each_spelling_means_what_the_table_says(
    text, kind, canonical, ollama_name, repo, quant, revision, provision, source
):
    ref = parse_model_ref(text)
    assert (ref.kind, ref.canonical, ref.ollama_name, ref.repo, ref.quant, ref.revision) == (
        kind, canonical, ollama_name, repo, quant, revision,
    )  # fmt: skip
    assert (ref.provision, ref.source, ref.pinned) == (provision, source, revision is not None)
    assert parse_model_ref(ref.canonical) == ref  # canonical is a fixed point
    if ref.provision == "ollama_pull":  # the name a host lists means the same model
        assert parse_model_ref(str(ollama_name)).ollama_name == ollama_name


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "1 to 512"),
        ("   ", "1 to 512"),
        ("q" * 513, "1 to 512"),
        ("qwen3 8b", "model name 'qwen3 8b'"),
        ("bad$name", "model name 'bad$name'"),
        ("bad name:tag", "model name"),
        ("qwen3:bad tag", "tag 'bad tag'"),
        ("qwen3:", "tag ''"),
        ("a/b/c", "repository"),
        ("a/b/c:tag", "too many '/'"),
        ("../x", "repository '../x'"),
        ("org/--x", "repository"),
        ("x@", "revision ''"),
        ("org/repo@../../x", "revision '../../x'"),
        ("org/repo@a b", "revision 'a b'"),
        ("qwen3:8b@v1", "takes no revision"),
        ("hf.co/u/r@abc", "a pinned import names its quantization"),
        ("hf.co/u/r:latest@abc", "a pinned import names its quantization"),
        ("hf.co/../../etc:Q4_K_M@v1", "repository '../../etc'"),
        ("hf.co/only-one-part:Q4_K_M", "repository 'only-one-part'"),
        ("hf.co/u/r/extra:Q4_K_M", "repository 'u/r/extra'"),
        ("hf.co/a/b:Q9_X", "unknown quantization 'Q9_X'"),
        ("hf.co/a/b:UD-Q9_X", "unknown quantization 'UD-Q9_X'"),
        ("hf.co/a/b:Q4_K_M@", "revision ''"),
        ("https://huggingface.co/u/r/tree/main", "repository 'u/r/tree/main'"),
        ("local:../../etc/passwd", "'..'"),
        ("local:/etc/passwd", "relative"),
        ("local:a//b.gguf", "empty parts"),
        ("local:", "local file ''"),
    ],
)
def test_refused_spellings_name_the_part_at_fault(text, names):
    with pytest.raises(ModelRefError, match=names.replace("(", r"\(").replace("$", r"\$")):
        parse_model_ref(text)


def test_pinned_reference_and_its_ollama_name_come_from_the_same_rule():
    ref = parse_model_ref(pinned_hf_ref("acme/m-GGUF", "Q4_K_M", "v1"))
    assert ref.ollama_name == pinned_ollama_name("acme/m-GGUF", "Q4_K_M", "v1") == "hf.co/acme/m-GGUF:Q4_K_M-v1"
    assert ref.canonical == pinned_hf_ref("acme/m-GGUF", "Q4_K_M", "v1")


def test_length_limit_counts_the_stripped_text():
    longest = "local:" + "d/" * 250 + "x.gguf"
    assert len(longest) == 512 and parse_model_ref(f"  {longest}\n").canonical == longest
    with pytest.raises(ModelRefError, match="1 to 512"):
        parse_model_ref("local:d" + longest[6:])


def test_a_reference_is_a_frozen_value():
    ref = parse_model_ref("qwen3:8b")
    assert ref == ModelRef(kind="ollama", name="qwen3", tag="8b") and hash(ref) == hash(parse_model_ref(" qwen3:8b"))
    with pytest.raises(ValueError):
        ref.tag = "1b"  # type: ignore[misc]
