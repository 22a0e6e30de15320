import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Beside the clone (CI, the main checkout); SDFT_SHARED_DATA points elsewhere (a git worktree in another folder).
SHARED_DATA = Path(os.environ.get("SDFT_SHARED_DATA") or
                   Path(__file__).resolve().parents[1].parent / "shared" / "data") / "sdft-paper"


def pytest_configure(config):
    # The fake backend is a test double: registered here, for the tests, never in sdft's own table.
    from sdft.generation import register_backend
    register_backend("fake", "sdft.generation.fake:FakeBackend")
    # A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits SIGINT
    # ignored, and so would every sdft process the tests start: the Ctrl-C tests would wait forever. A
    # handled signal is reset to the default on exec, so handling it here gives the children Ctrl-C again.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """Path of a saved tiny random llama model (2 layers, hidden 16) with a chat-template tokenizer."""
    from tiny_model import build_tiny_model
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA
