"""A local stand-in for Bakkt's PTR environment: the `/partner/v1` Fiat API, its webhooks, and
Bakkt's bad days on demand. See docs/sandbox.md.

Entry points: `server.run` / `server.serve` / `server.SandboxServer` to serve it,
`testing.running_sandbox` and `pytest_plugin` to test against it, `config.SandboxSettings`.
"""
