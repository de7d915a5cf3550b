"""The hosted bank-picker page behind a link URL (docs/bakkt-contract.md A2)."""

from html import escape
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from bakkt_sandbox.bank import LinkSession
from bakkt_sandbox.model import ApiError, BankAccount, now_ms
from bakkt_sandbox.runtime import SANDBOX

# choice -> (bank name, mask, account type, failure reason or None)
BANKS: dict[str, tuple[str, str, str, str | None]] = {
    "checking": ("Sandbox National Bank", "6789", "CHECKING", None),
    "savings": ("Sandbox Credit Union", "4321", "SAVINGS", None),
    "unsupported": (
        "Unsupported Savings & Loan",
        "0000",
        "CHECKING",
        "UNSUPPORTED_FINANCIAL_INSTITUTION",
    ),
}
CANCEL_CHOICE = "cancel"

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:30rem;margin:3rem auto;padding:0 1rem}"
    "button{display:block;width:100%;margin:.5rem 0;padding:.8rem;font-size:1rem;cursor:pointer}"
    ".muted{color:#666;font-size:.9rem}"
)


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>"
    )
    return web.Response(text=html, status=status, content_type="text/html")


def _session(request: web.Request) -> LinkSession | web.Response:
    session = request.app[SANDBOX].bank.link_sessions.get(request.match_info["sessionId"])
    if session is None:
        return _page("Link not found", "<p>This link does not exist.</p>", 404)
    if session.used:
        return _page("Link already used", "<p>This link has already been used.</p>", 410)
    if session.expires_ms <= now_ms():
        return _page("Link expired", "<p>This link has expired; ask for a new one.</p>", 410)
    return session


async def show(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if isinstance(session, web.Response):
        return session
    buttons = "".join(
        f"<button name=bank value={escape(choice)}>{escape(name)} — {escape(kind.title())}"
        f" ••••{escape(mask)}</button>"
        for choice, (name, mask, kind, _) in BANKS.items()
    )
    body = (
        f"<p class=muted>Bakkt sandbox · link request {escape(session.link_ref)}</p>"
        f"<p>Choose the bank account to link.</p>"
        f"<form method=post>{buttons}"
        f"<button name=bank value={CANCEL_CHOICE}>Cancel</button></form>"
    )
    return _page("Link your bank account", body)


async def finish(request: web.Request) -> web.StreamResponse:
    session = _session(request)
    if isinstance(session, web.Response):
        return session
    form = await request.post()
    choice = form.get("bank")
    if not isinstance(choice, str) or (choice not in BANKS and choice != CANCEL_CHOICE):
        return _page("Choose a bank", "<p>Unknown choice.</p>", 400)
    bank = request.app[SANDBOX].bank
    session.used = True
    party = bank.party(session.party_ref)
    account: BankAccount | None = None
    if choice == CANCEL_CHOICE:
        failure: str | None = "USER_CANCELLED"
    else:
        name, mask, kind, failure = BANKS[choice]
        account = BankAccount(session.link_ref, name, mask, kind, "123456780", "hosted")
    if failure is None:
        try:
            bank.active_party(party.ref)
        except ApiError as exc:
            failure = exc.type
    if failure is None and account is not None:
        bank.link(party, account)
        status = "LINKED"
    else:
        bank.link_failed(party, session.link_ref, failure or "USER_CANCELLED", account)
        status = "FAILED"
    if session.redirect_uri:
        parts = urlsplit(session.redirect_uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        query += [("partnerTransactionRef", session.link_ref), ("status", status)]
        # Set by hand: aiohttp's redirect classes parse the location with yarl, which turns an
        # app's `myapp://bank-linked` into `myapp://bank-linked/`, not the URI the partner gave.
        location = urlunsplit(parts._replace(query=urlencode(query)))
        redirect = web.HTTPSeeOther(location)
        redirect.headers["Location"] = location
        raise redirect
    return _page(
        "Bank account linked" if status == "LINKED" else "Bank account not linked",
        f"<p>Status: {status}. You can close this window.</p>",
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/link/{sessionId}", show)
    app.router.add_post("/link/{sessionId}", finish)
