"""``python -m bananaline.simulator --port N``: the simulator as its own process."""

from __future__ import annotations

import argparse

from .config import SimulatorConfig
from .server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bananaline.simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png")
    parser.add_argument("--not-realistic", action="store_true", help="small flat images, no noise")
    parser.add_argument("--openai-style", choices=("markdown", "images", "parts", "url"), default="markdown")
    parser.add_argument("--palette-size", type=int, default=8)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    config = SimulatorConfig(
        latency_s=args.latency_s,
        image_format=args.image_format,
        realistic=not args.not_realistic,
        default_openai_style=args.openai_style,
        palette_size=args.palette_size,
    )
    run(args.host, args.port, config, log_level=args.log_level)


if __name__ == "__main__":
    main()
