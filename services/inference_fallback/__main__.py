"""`python -m services.inference_fallback`: run the inference-fallback service until SIGTERM."""

from services.inference_fallback.app import build_app
from services.inference_fallback.settings import InferenceFallbackSettings
from services.runtime.service import run_service


def main() -> None:
    run_service(lambda: build_app(InferenceFallbackSettings()))


if __name__ == "__main__":
    main()
