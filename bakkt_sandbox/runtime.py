"""The state of one running sandbox: shared by the partner API, control API and link page."""

import asyncio

from aiohttp import web

from bakkt_sandbox.auth import TokenIssuer
from bakkt_sandbox.bank import Bank
from bakkt_sandbox.config import SandboxSettings
from bakkt_sandbox.faults import FaultRegistry
from bakkt_sandbox.persistence import StateStore
from bakkt_sandbox.webhooks import WebhookDispatcher


class Sandbox:
    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.webhooks = WebhookDispatcher(settings)
        self.bank = Bank(settings, self.webhooks.publish)
        self.tokens = TokenIssuer(settings)
        self.faults = FaultRegistry(settings.fault_seed)
        self.load_initial_faults()
        # Set on shutdown so requests held open by a `timeout` fault let go at once.
        self.closing = asyncio.Event()
        self.store: StateStore | None = None
        if settings.state_dir is not None:
            self.store = StateStore(settings.state_dir, settings.state_save_interval)
            self.store.load(self)

    def load_initial_faults(self) -> None:
        self.faults.clear()
        for spec in self.settings.faults:
            self.faults.add(spec)

    def reset(self) -> None:
        self.bank.reset()
        self.webhooks.reset()
        self.load_initial_faults()


SANDBOX = web.AppKey("sandbox", Sandbox)
