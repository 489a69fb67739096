"""Local PyTorch slots that answer while Ollama is down."""
