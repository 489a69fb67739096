"""`python -m services.hardware_probe`: run the probe daemon until SIGTERM; `--once` prints one sample as JSON."""

import asyncio
import sys

from services.hardware_probe.app import build_app, build_sampler, local_host_id
from services.hardware_probe.settings import HardwareProbeSettings
from services.runtime.service import run_service


async def once(settings: HardwareProbeSettings) -> str:
    sampler = build_sampler(settings, local_host_id(settings))
    try:
        return (await sampler.sample()).model_dump_json(indent=2)
    finally:
        await sampler.close()


def main() -> None:
    if "--once" in sys.argv[1:]:
        print(asyncio.run(once(HardwareProbeSettings())))
        return
    run_service(lambda: build_app(HardwareProbeSettings()))


if __name__ == "__main__":
    main()
