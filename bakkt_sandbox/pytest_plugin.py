"""pytest fixtures for a Bakkt sandbox, for this project's tests and partners' CI.

Enable with `pytest_plugins = ["bakkt_sandbox.pytest_plugin"]` in a conftest.py. Override the
`bakkt_sandbox_settings` fixture to change the sandbox's settings.
"""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.testing import RunningSandbox, running_sandbox


@pytest.fixture(scope="session")
def bakkt_sandbox_settings() -> SandboxSettings:
    """Test-friendly settings: a frozen clock (lifecycle moves only on `advance_clock` or the
    control API), no webhook target until a test sets one, and retries in fractions of a second."""
    return SandboxSettings(
        time_scale=0,
        webhook_url="",
        webhook_retry_schedule=[0.05, 0.1, 0.2, 0.4, 0.8],
        webhook_timeout=2.0,
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def bakkt_sandbox(bakkt_sandbox_settings: SandboxSettings) -> AsyncIterator[RunningSandbox]:
    """One sandbox per session: give each test its own party refs, or use fresh_bakkt_sandbox."""
    async with running_sandbox(settings=bakkt_sandbox_settings) as sandbox:
        yield sandbox


@pytest_asyncio.fixture(loop_scope="session")
async def fresh_bakkt_sandbox(bakkt_sandbox: RunningSandbox) -> AsyncIterator[RunningSandbox]:
    """The session sandbox, reset before the test (state, faults and webhook modes)."""
    await bakkt_sandbox.reset()
    yield bakkt_sandbox
