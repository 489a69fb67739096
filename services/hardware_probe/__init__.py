"""One daemon per GPU host: samples CPU, memory, GPUs and the host's Ollama."""
