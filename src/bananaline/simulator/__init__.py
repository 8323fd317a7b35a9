"""The fake upstream: Google's Gemini image API and an OpenAI-compatible relay, with real
images at exact pixel sizes and every fault on demand. The oracle of tests and benchmarks."""

from .app import create_app
from .config import SimulatorConfig
from .faults import FAULTS, REFUSALS
from .server import SimulatorServer, free_port, run
from .stats import key_id, prompt_id

__all__ = [
    "FAULTS",
    "REFUSALS",
    "SimulatorConfig",
    "SimulatorServer",
    "create_app",
    "free_port",
    "key_id",
    "prompt_id",
    "run",
]
