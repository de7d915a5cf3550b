// The demo page: plays the partner's app against the funding API, and Bakkt through the
// sandbox's control API (forwarded by the service under /demo/sandbox/). No framework, no build.
"use strict";

(() => {
  // --- what the sandbox does with each input (bakkt_sandbox/magic.py, docs/sandbox.md) ---------

  // [token, what the list says, what the hint under it says]
  const PLAID_TOKENS = [
    ["processor-sandbox-ok", "links", "Links “First Platypus Bank”: PENDING, then LINKED by Bakkt's webhook."],
    ["processor-unsupported-demo", "fails later", "Bakkt accepts it, then its webhook says FAILED: UNSUPPORTED_FINANCIAL_INSTITUTION."],
    ["processor-unsupported-sync-demo", "refused: unsupported bank", "Bakkt refuses it at once: an unsupported bank."],
    ["processor-invalid-demo", "refused: invalid token", "Bakkt refuses it at once: the token names no Plaid item."],
    ["processor-expired-demo", "refused: expired", "Bakkt refuses it at once: the stored authorization is no longer valid."],
  ];

  // [amount, what the list says, what the hint under it says]
  const AMOUNTS = {
    deposit: [
      ["25.00", "settles", "PENDING, then COMPLETED after 3 business days at Bakkt (advance the clock)."],
      ["25.01", "declined", "Bakkt accepts it, then declines it: DECLINED with RISK_DECLINED."],
      ["25.02", "cancelled", "Bakkt accepts it, then cancels it: CANCELLED."],
      ["25.03", "returned before completing", "PENDING, then RETURNED with R01 (insufficient funds) after 1 business day."],
      ["25.04", "completes, then returned with a fee", "COMPLETED after 3 business days, then RETURNED with R10 two days later, plus a 15.00 return fee; the bank account is flagged for review."],
      ["25.05", "stays pending", "Stays PENDING until the sandbox moves it (the buttons in its row)."],
      ["30000.00", "over the limit", "Above the per-transaction limit: the service refuses it (422 limit_exceeded); nothing is sent or written."],
      ["", "another amount…", ""],
    ],
    "withdraw-ach": [
      ["10.00", "completes", "COMPLETED shortly after Bakkt accepts it (0.05 business days)."],
      ["10.01", "declined", "Bakkt accepts it, then declines it: DECLINED."],
      ["10.05", "stays pending", "Stays PENDING until the sandbox moves it (the buttons in its row)."],
      ["5.00", "below the minimum", "Below Bakkt's 10.00 minimum for an ACH withdrawal: 422 below_minimum; nothing is written."],
      ["20000.00", "more than the balance", "Bakkt refuses it (insufficient_balance): the transaction stays in the list as FAILED."],
      ["", "another amount…", ""],
    ],
    "withdraw-wire": [
      ["12.00", "completes", "A wire to the account below: PENDING, then COMPLETED after 0.25 business days."],
      ["12.01", "declined", "Bakkt accepts it, then declines it: DECLINED."],
      ["12.05", "stays pending", "Stays PENDING until the sandbox moves it (the buttons in its row)."],
      ["", "another amount…", ""],
    ],
  };

  const SUBMIT_LABEL = { deposit: "Deposit", "withdraw-ach": "Withdraw", "withdraw-wire": "Send wire" };

  // Filled in with the service's own settings (GET /demo/config) once they are known.
  const faultPresets = (cfg) => {
    const n = cfg ? cfg.transferMaxAttempts : 4;
    const timeout = cfg ? cfg.bakktReadTimeout : 10;
    return [
      {
        label: "5xx: Bakkt answers 503 to the next transfer",
        hint: `Every one of the service's ${n} attempts of the next transfer gets 503. The service answers UNKNOWN (it cannot know whether Bakkt acted); some 10 s later recovery looks the transfer up, finds Bakkt never got it, and re-sends it with the same idempotency key: PENDING.`,
        body: { operation: "transferFiatCurrency", mode: "error", status: 503, count: n },
      },
      {
        label: "Timeout: Bakkt never answers the next transfer",
        hint: `Bakkt holds each of the ${n} attempts without answering; each waits BAKKT_READ_TIMEOUT (${timeout} s), so the request answers UNKNOWN after about ${Math.round(n * timeout)} s. Then recovery re-sends it with the same key.`,
        body: { operation: "transferFiatCurrency", mode: "timeout", holdSeconds: Math.max(30, timeout * 3), count: n },
      },
      {
        label: "Accept, then drop: Bakkt acts but its answer is lost",
        hint: `Bakkt records the next transfer, then closes the connection before answering, on each of the ${n} attempts; all carry the same key, so Bakkt holds one transfer (the sandbox's requestCount shows the resends). Bakkt's PENDING webhook usually arrives during the retries, so the answer is PENDING and the lost UNKNOWN shows in the history as not applied; otherwise it is UNKNOWN until recovery's look-up finds the transfer.`,
        body: { operation: "transferFiatCurrency", mode: "accept_then_drop", count: n },
      },
      {
        label: "Outage: every Bakkt call answers 503 until cleared",
        hint: "Transfers answer UNKNOWN, balance reads 503 bakkt_unavailable, and the service's circuit breaker opens. Clear the faults and watch recovery settle what was left UNKNOWN.",
        body: { operation: "*", mode: "error", status: 503 },
      },
    ];
  };

  const REASONS = {
    R01: "Insufficient funds",
    R02: "Account closed",
    R03: "No account / unable to locate account",
    R04: "Invalid account number",
    R10: "Customer advises unauthorized",
    RISK_DECLINED: "Declined by Bakkt risk checks",
    CANCELLED: "Cancelled by Bakkt",
    insufficient_balance: "Not enough settled balance at Bakkt",
    below_minimum: "Below Bakkt's minimum",
    wire_destination_not_retained: "Bakkt never got it; a wire's account number is not kept to re-send",
    bakkt_idempotency_key_expired: "Bakkt no longer remembers the key",
    link_expired: "The hosted link page expired unused",
    USER_CANCELLED: "The consumer cancelled on the hosted page",
    UNSUPPORTED_FINANCIAL_INSTITUTION: "Bakkt does not support this bank",
  };

  const TONES = {
    PENDING: "amber", SUBMITTING: "blue", UNKNOWN: "violet", COMPLETED: "green", FAILED: "red",
    DECLINED: "red", CANCELLED: "gray", RETURNED: "red", LINKED: "green", REPLACED: "gray",
    UNLINKED: "gray", DISABLED: "red", ACTIVE: "green", SUSPENDED: "red", LIQUIDATED: "amber",
    UNDER_REVIEW: "violet", INACTIVE: "gray", CLOSED: "gray",
  };

  const POLL_MS = 2000;
  const CLOCK_MS = 2000;

  // --- state ------------------------------------------------------------------------------------

  const state = {
    party: null,
    token: null,
    config: null,
    partyInfo: null,
    balance: null,
    accounts: new Map(),
    txns: new Map(),
    expanded: new Set(),
    detailsLoading: new Set(),
    fresh: new Set(),
    clock: null,
    faults: [],
    feed: null, // {abort, mode, lastId}
    timers: [],
    lastErrors: new Map(),
  };

  // --- small DOM helpers ------------------------------------------------------------------------

  const $ = (sel) => document.querySelector(sel);

  // Builds elements from data as text nodes, so nothing the API returns is parsed as markup.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else if (k === "dataset") Object.assign(el.dataset, v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const badge = (status, big) =>
    h("span", { class: big ? "badge big" : "badge", dataset: { tone: TONES[status] || "gray" } }, status);

  const time = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "");
  const dateTime = (iso) =>
    iso ? new Date(iso).toLocaleString([], { hour12: false, month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "";
  const money = (amount) => {
    const n = Number(amount);
    return Number.isFinite(n) ? n.toLocaleString("en-US", { style: "currency", currency: "USD" }) : String(amount);
  };

  function newKey(prefix) {
    const rand = window.crypto && crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`;
    return `${prefix}-${rand}`;
  }

  // --- HTTP -------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, body) {
      super(message);
      this.status = status;
      this.code = code;
      this.body = body;
    }
    describe() {
      return this.status ? `${this.status} ${this.code}: ${this.message}` : `${this.code}: ${this.message}`;
    }
  }

  async function request(method, url, { body, headers = {} } = {}) {
    const init = { method, headers: { Accept: "application/json", ...headers }, cache: "no-store" };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
    let res;
    try {
      res = await fetch(url, init);
    } catch (err) {
      throw new ApiError(0, "network_error", `${method} ${url} got no answer (${err.message})`, null);
    }
    const text = await res.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!res.ok) {
      // The service's problem+json has `code` and `detail`; the sandbox's envelope (Bakkt's
      // PublicApiError) has `type` and `description`. Shown exactly as they came.
      const d = data && typeof data === "object" ? data : {};
      const code = d.code || d.type || `http_${res.status}`;
      const message = d.detail || d.description || d.title || (typeof data === "string" ? data : res.statusText);
      throw new ApiError(res.status, code, message, data);
    }
    return { status: res.status, body: data, headers: res.headers };
  }

  async function fetchToken() {
    const { body } = await request("POST", "/demo/token", { body: { partyRef: state.party } });
    state.token = body.token;
    return body.token;
  }

  // The funding API for the current party, with the token; an expired token is renewed once.
  async function api(method, path, { body, key } = {}) {
    const url = `/v1/parties/${encodeURIComponent(state.party)}${path}`;
    const headers = () => {
      const out = { Authorization: `Bearer ${state.token}` };
      if (key) out["Idempotency-Key"] = key;
      return out;
    };
    try {
      return await request(method, url, { body, headers: headers() });
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        await fetchToken();
        return request(method, url, { body, headers: headers() });
      }
      throw err;
    }
  }

  const sandbox = (method, path, body) => request(method, `/demo/sandbox/${path}`, { body });

  // --- activity log and errors ------------------------------------------------------------------

  function log(kind, message) {
    const list = $("#log");
    list.prepend(h("li", { class: kind }, h("span", { class: "t" }, time(new Date().toISOString())), h("span", { class: "msg" }, message)));
    while (list.children.length > 200) list.lastChild.remove();
  }

  function showError(target, err) {
    const box = $(target);
    if (!err) {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    box.hidden = false;
    if (err instanceof ApiError) {
      box.replaceChildren(
        h("span", {},
          err.status ? `${err.status} ` : "",
          h("code", {}, err.code),
          ` — ${err.message}`,
          err.body && err.body.transactionId ? h("span", { class: "reason-text" }, `transactionId ${err.body.transactionId}`) : null),
      );
    } else {
      box.replaceChildren(String(err));
    }
  }

  // Background refreshes repeat: log an error once until it changes or clears.
  function noteBackground(what, err) {
    const text = err ? err.describe() : null;
    if (state.lastErrors.get(what) === text) return;
    state.lastErrors.set(what, text);
    if (text) log("error", `${what}: ${text}`);
  }

  // One user action: the button is busy meanwhile, and the answer goes to the log either way.
  async function action(button, errorTarget, label, fn) {
    if (button) button.disabled = true;
    if (errorTarget) showError(errorTarget, null);
    try {
      const result = await fn();
      log("ok", typeof result === "string" ? result : label);
      return result;
    } catch (err) {
      const e = err instanceof ApiError ? err : new ApiError(0, "page_error", String(err), null);
      if (errorTarget) showError(errorTarget, e);
      log("error", `${label}: ${e.describe()}`);
      return undefined;
    } finally {
      if (button) button.disabled = false;
    }
  }

  // --- merging what the API says ---------------------------------------------------------------

  // Events and reads may arrive in either order: keep the newer version of each thing.
  function newer(old, item) {
    if (!old) return true;
    return Date.parse(item.updatedAt) >= Date.parse(old.updatedAt);
  }

  function upsertTxn(item, { flash = false } = {}) {
    const old = state.txns.get(item.id);
    if (!newer(old, item)) return;
    const merged = { ...item };
    if (!item.history && old && old.history && old.updatedAt === item.updatedAt) merged.history = old.history;
    state.txns.set(item.id, merged);
    if (flash && (!old || old.status !== item.status)) state.fresh.add(item.id);
    if (state.expanded.has(item.id) && !merged.history) loadDetail(item.id);
  }

  function upsertAccount(item, { flash = false } = {}) {
    const old = state.accounts.get(item.id);
    if (!newer(old, item)) return;
    state.accounts.set(item.id, item);
    if (flash && (!old || old.status !== item.status)) state.fresh.add(item.id);
  }

  async function loadDetail(id) {
    if (state.detailsLoading.has(id)) return;
    state.detailsLoading.add(id);
    try {
      const { body } = await api("GET", `/transactions/${id}`);
      upsertTxn(body);
      render();
    } catch (err) {
      noteBackground(`transaction ${id}`, err);
    } finally {
      state.detailsLoading.delete(id);
    }
  }

  // --- reading everything (the snapshot, and the polling fallback) ----------------------------

  async function refreshParty() {
    try {
      state.partyInfo = (await api("GET", "")).body;
      noteBackground("party", null);
    } catch (err) {
      noteBackground("party", err);
    }
  }

  async function refreshAccounts() {
    try {
      for (const item of (await api("GET", "/bank-accounts")).body.items) upsertAccount(item);
      noteBackground("bank accounts", null);
    } catch (err) {
      noteBackground("bank accounts", err);
    }
  }

  async function refreshTransactions() {
    try {
      for (const item of (await api("GET", "/transactions?limit=50")).body.items) upsertTxn(item);
      noteBackground("transactions", null);
    } catch (err) {
      noteBackground("transactions", err);
    }
  }

  async function refreshBalance() {
    try {
      state.balance = (await api("GET", "/balance")).body;
      noteBackground("balance", null);
    } catch (err) {
      state.balance = { error: err };
      noteBackground("balance", err);
    }
  }

  async function refreshSandbox() {
    try {
      const [clock, faults] = await Promise.all([sandbox("GET", "clock"), sandbox("GET", "faults")]);
      state.clock = clock.body;
      state.faults = Array.isArray(faults.body) ? faults.body : faults.body.faults || [];
      noteBackground("sandbox", null);
    } catch (err) {
      noteBackground("sandbox", err);
    }
  }

  async function refreshAll() {
    await Promise.all([refreshParty(), refreshAccounts(), refreshTransactions(), refreshBalance(), refreshSandbox()]);
    render();
  }

  let balanceTimer = null;
  function scheduleBalance() {
    clearTimeout(balanceTimer);
    balanceTimer = setTimeout(async () => {
      await refreshBalance();
      render();
    }, 250);
  }

  // --- the party's event stream ----------------------------------------------------------------

  // Server-sent events over fetch(): EventSource cannot send an Authorization header.
  function sseParser(onMessage, onComment) {
    let buffer = "";
    let data = [];
    let event = "";
    let id = null;
    return (chunk) => {
      buffer += chunk;
      for (;;) {
        const at = buffer.search(/\r\n|\r|\n/);
        if (at < 0) return;
        // A lone "\r" at the end may be the first half of "\r\n" still to come.
        if (buffer[at] === "\r" && at === buffer.length - 1) return;
        const line = buffer.slice(0, at);
        buffer = buffer.slice(at + (buffer.startsWith("\r\n", at) ? 2 : 1));
        if (line === "") {
          if (data.length) onMessage({ id, event: event || "message", data: data.join("\n") });
          data = [];
          event = "";
          continue;
        }
        if (line.startsWith(":")) {
          onComment(line.slice(1).trim());
          continue;
        }
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") data.push(value);
        else if (field === "event") event = value;
        else if (field === "id" && !value.includes("\0")) id = value;
      }
    };
  }

  function setFeed(mode, text) {
    const el = $("#feed-status");
    el.dataset.state = mode;
    el.textContent = text;
    if (state.feed) state.feed.mode = mode;
    $("#events-mode").textContent =
      mode === "live" ? "live over the party's event stream" : mode === "polling" ? "polling: this service has no event stream" : text;
  }

  function applyEvent(evt) {
    const kind = evt.type.split(".")[0];
    if (kind === "transaction") {
      upsertTxn(evt.data, { flash: true });
      scheduleBalance();
    } else if (kind === "bank_account") {
      upsertAccount(evt.data, { flash: true });
    } else if (kind === "party") {
      state.partyInfo = evt.data;
    }
    const subject = evt.data && (evt.data.status || evt.data.partyRef) ? ` → ${evt.data.status}` : "";
    const list = $("#events");
    list.prepend(
      h("li", { dataset: { type: evt.type } }, h("span", { class: "t" }, time(evt.createdAt)), h("span", { class: "type" }, `${evt.type}${subject}`)),
    );
    while (list.children.length > 200) list.lastChild.remove();
    render();
  }

  function stopFeed() {
    if (state.feed) state.feed.abort.abort();
    state.feed = null;
    for (const t of state.timers) clearInterval(t);
    state.timers = [];
  }

  function startPolling() {
    setFeed("polling", "polling every 2 s");
    state.timers.push(setInterval(refreshAll, POLL_MS));
  }

  async function startFeed() {
    stopFeed();
    const feed = { abort: new AbortController(), mode: "connecting", lastId: null };
    state.feed = feed;
    const party = state.party;
    state.timers.push(setInterval(async () => {
      if (document.visibilityState !== "visible") return;
      await refreshSandbox();
      renderSandbox();
    }, CLOCK_MS));
    let delay = 500;
    while (state.feed === feed && state.party === party) {
      setFeed("connecting", "connecting…");
      let res;
      try {
        const headers = { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" };
        if (feed.lastId) headers["Last-Event-ID"] = feed.lastId;
        res = await fetch(`/v1/parties/${encodeURIComponent(party)}/events/stream`, { headers, signal: feed.abort.signal, cache: "no-store" });
      } catch (err) {
        if (feed.abort.signal.aborted) return;
        setFeed("error", "stream lost, retrying");
        await sleep(delay);
        delay = Math.min(delay * 2, 10000);
        continue;
      }
      if (res.status === 404) {
        // A service without the event stream: the page still works, by reading every 2 s.
        await refreshAll();
        startPolling();
        return;
      }
      if (res.status === 401) {
        await fetchToken().catch(() => {});
        await sleep(delay);
        continue;
      }
      if (!res.ok || !res.body) {
        const text = await res.text().catch(() => "");
        noteBackground("event stream", new ApiError(res.status, `http_${res.status}`, text.slice(0, 200), null));
        setFeed("error", `stream answered ${res.status}, retrying`);
        await sleep(delay);
        delay = Math.min(delay * 2, 10000);
        continue;
      }
      delay = 500;
      setFeed("live", "live");
      // Read after the stream is open, so nothing that happens meanwhile is missed; events
      // and reads merge by updatedAt either way.
      refreshAll();
      const parse = sseParser(
        (msg) => {
          if (msg.id) feed.lastId = msg.id;
          let evt;
          try {
            evt = JSON.parse(msg.data);
          } catch {
            log("error", `event stream: a message that is not JSON (${msg.data.slice(0, 80)})`);
            return;
          }
          applyEvent(evt);
        },
        () => {},
      );
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          parse(value);
        }
      } catch (err) {
        if (feed.abort.signal.aborted) return;
      }
      if (state.feed !== feed) return;
      // The server ended the stream (a restart, a deploy): resume after the last event seen.
      setFeed("connecting", "reconnecting…");
      await sleep(delay);
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // --- rendering ---------------------------------------------------------------------------------

  function reasonCell(code) {
    if (!code) return h("td", {}, "");
    return h("td", {}, h("span", { class: "reason-code" }, code), REASONS[code] ? h("span", { class: "reason-text" }, REASONS[code]) : null);
  }

  function renderParty() {
    $("#party-ref").textContent = state.party || "";
    const box = $("#party");
    const p = state.partyInfo;
    if (!p) {
      box.replaceChildren(h("p", { class: "muted" }, "Loading…"));
      return;
    }
    const allowed = p.allowed || {};
    // The accounts follow their own events; the party's copy of its current one may be older.
    const acct = [...state.accounts.values()].find((a) => a.current) || (state.accounts.size ? null : p.currentBankAccount);
    box.replaceChildren(
      h("div", { class: "party-status", id: "party-status", dataset: { status: p.status } },
        badge(p.status, true),
        p.reasonCode ? h("span", { class: "reason" }, h("span", { class: "reason-code" }, p.reasonCode), p.reasonMeaning ? ` — ${p.reasonMeaning}` : "") : null),
      h("div", { class: "allowed" },
        [["deposit", "deposit"], ["withdraw", "withdraw"], ["linkBankAccount", "link a bank"]].map(([k, label]) =>
          h("span", { class: allowed[k] ? "" : "no" }, label))),
      h("dl", { class: "kv" },
        h("dt", {}, "Current account"),
        h("dd", {}, acct ? `${acct.bankName || "?"} ••••${acct.accountMask || "????"}` : "none linked"),
        p.reasonEffect ? [h("dt", {}, "Effect"), h("dd", {}, p.reasonEffect)] : null,
        p.statusChangedAt ? [h("dt", {}, "Since"), h("dd", {}, dateTime(p.statusChangedAt))] : null),
    );
  }

  function renderBalance() {
    const box = $("#balance");
    const b = state.balance;
    if (!b) {
      box.replaceChildren(h("p", { class: "muted" }, "Loading…"));
    } else if (b.error) {
      box.replaceChildren(h("div", { class: "inline-error" }, `${b.error.status} `, h("code", {}, b.error.code), ` — ${b.error.message}`));
    } else {
      box.replaceChildren(
        h("div", { class: "balance-main", id: "balance-settled", dataset: { amount: b.settled } }, money(b.settled)),
        h("div", { class: "balance-sub", id: "balance-unsettled", dataset: { amount: b.unsettled } }, `settled · ${money(b.unsettled)} on its way`),
      );
    }
  }

  function renderAccounts() {
    const rows = [...state.accounts.values()].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt));
    $("#accounts tbody").replaceChildren(
      ...(rows.length
        ? rows.map((a) =>
            h("tr", { class: state.fresh.has(a.id) ? "fresh" : "", dataset: { id: a.id, status: a.status, method: a.linkMethod } },
              h("td", {}, a.bankName || h("span", { class: "muted" }, a.status === "PENDING" ? "waiting for Bakkt" : "–")),
              h("td", { class: "nowrap" }, a.accountMask ? `${(a.accountType || "").toLowerCase()} ••••${a.accountMask}` : "–"),
              h("td", {}, a.linkMethod),
              h("td", {}, badge(a.status), a.current ? h("span", { class: "current-tag" }, "current") : null,
                a.needsReview ? h("span", { class: "reason-text" }, "flagged for review") : null),
              reasonCell(a.reasonCode),
              h("td", { class: "when" }, dateTime(a.updatedAt))))
        : [h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No bank account yet: link one above."))]),
    );
  }

  function sign(t) {
    return t.type === "DEPOSIT" ? "+" : t.type === "ADJUSTMENT" ? "" : "−";
  }

  function txnActions(t) {
    const ours = t.type === "DEPOSIT" || t.type === "WITHDRAWAL";
    if (!ours) return [];
    const move = (verb, body, label) =>
      h("button", {
        type: "button", class: "mini secondary", dataset: { action: verb },
        onclick: (ev) => {
          ev.stopPropagation();
          action(ev.currentTarget, "#sandbox-error", `sandbox ${verb} ${t.id.slice(0, 8)}`, async () => {
            await sandbox("POST", `transactions/${encodeURIComponent(t.id)}/${verb}`, { partnerPartyRef: state.party, ...body });
            return `sandbox: ${label} ${t.type.toLowerCase()} ${money(t.amount)}`;
          });
        },
      }, label);
    if (t.status === "PENDING") return [move("settle", {}, "Settle"), move("decline", {}, "Decline")];
    if (t.status === "COMPLETED" && t.method === "ACH") return [move("return", { reasonCode: "R10" }, "Return R10")];
    return [];
  }

  function historyRow(t) {
    const entries = t.history;
    return h("tr", { class: "history", dataset: { for: t.id } },
      h("td", { colspan: 6 },
        !entries
          ? h("span", { class: "muted" }, "Loading history…")
          : h("ol", { class: "timeline" },
              entries.map((e) =>
                h("li", { dataset: { to: e.to, source: e.source } },
                  h("span", { class: "when" }, dateTime(e.at)),
                  h("span", { class: e.applied === false ? "ignored" : "" },
                    e.from ? `${e.from} → ${e.to}` : `created ${e.to}`,
                    h("span", { class: "src" }, e.source),
                    e.reasonCode ? ` ${e.reasonCode}` : "",
                    e.applied === false ? (e.from === e.to ? ` (already ${e.to}: nothing to move)` : " (seen, not applied)") : "")))),
        h("div", { class: "reason-text" }, `id ${t.id}`)));
  }

  function renderTransactions() {
    const rows = [...state.txns.values()].sort((a, b) => Date.parse(b.createdAt) - Date.parse(a.createdAt) || (a.id < b.id ? 1 : -1));
    $("#tx-empty").hidden = rows.length > 0;
    const out = [];
    for (const t of rows) {
      const open = state.expanded.has(t.id);
      out.push(
        h("tr", {
          class: `txn${open ? " open" : ""}${state.fresh.has(t.id) ? " fresh" : ""}`,
          dataset: { id: t.id, type: t.type, method: t.method || "", status: t.status, amount: t.amount },
          title: "Show its history",
          onclick: () => toggleHistory(t.id),
        },
          h("td", { class: "when" }, dateTime(t.createdAt)),
          h("td", {}, t.type === "RETURN_FEE" ? "Return fee" : t.type.charAt(0) + t.type.slice(1).toLowerCase().replace(/_/g, " "), t.method ? h("span", { class: "reason-text" }, t.method) : null),
          h("td", { class: "num" }, `${sign(t)}${money(t.amount)}`),
          h("td", {}, badge(t.status)),
          reasonCell(t.reasonCode),
          h("td", {}, h("div", { class: "row-actions" }, txnActions(t)))),
      );
      if (open) out.push(historyRow(t));
    }
    $("#transactions tbody").replaceChildren(...out);
  }

  function toggleHistory(id) {
    if (state.expanded.has(id)) state.expanded.delete(id);
    else {
      state.expanded.add(id);
      if (!state.txns.get(id).history) loadDetail(id);
    }
    render();
  }

  function renderSandbox() {
    const c = state.clock;
    $("#clock").replaceChildren(
      h("span", { id: "clock-days", dataset: { days: c ? c.businessDays : "" } }, c ? `day ${Number(c.businessDays).toFixed(2)}` : "–"),
      c ? h("small", {}, c.frozen ? "  · frozen: only the buttons move it" : `  · ${c.timeScale} s per business day`) : "",
    );
    $("#faults").replaceChildren(
      ...state.faults.map((f) =>
        h("li", { class: f.exhausted ? "done" : "", dataset: { mode: f.mode, exhausted: f.exhausted ? "yes" : "no" } },
          `${f.mode}${f.mode === "error" ? ` ${f.status}` : ""} on ${f.operation}`,
          ` · hit ${f.hits}${f.count !== null && f.count !== undefined ? ` of ${f.count}` : " (until cleared)"}`,
          f.exhausted ? " · spent" : "")),
    );
  }

  function render() {
    renderParty();
    renderBalance();
    renderAccounts();
    renderTransactions();
    renderSandbox();
    state.fresh.clear();
  }

  // --- the forms -------------------------------------------------------------------------------

  function fillSelect(select, options, hintTarget) {
    select.replaceChildren(...options.map(([value, short], i) => h("option", { value: i }, `${value} — ${short}`)));
    const update = () => {
      $(hintTarget).textContent = (options[Number(select.value)] || [])[2] || "";
    };
    select.onchange = update;
    update();
  }

  function currentOp() {
    return document.querySelector('input[name="op"]:checked').value;
  }

  function setupMoneyForm() {
    const preset = $("#amount-preset");
    const sync = () => {
      const op = currentOp();
      const options = AMOUNTS[op];
      preset.replaceChildren(...options.map(([value, short], i) => h("option", { value: i }, value ? `${value} — ${short}` : short)));
      $("#wire-fields").hidden = op !== "withdraw-wire";
      $("#money-submit").textContent = SUBMIT_LABEL[op];
      update();
    };
    const update = () => {
      const [value, , text] = AMOUNTS[currentOp()][Number(preset.value)] || ["", "", ""];
      $("#amount-hint").textContent = value ? text : "Any amount in dollars, e.g. 42.50: the cents pick the outcome (.01 to .05 as above), anything else settles.";
      $("#amount-custom-label").hidden = Boolean(value);
    };
    preset.onchange = update;
    for (const radio of document.querySelectorAll('input[name="op"]')) radio.onchange = sync;
    sync();

    $("#money-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const op = currentOp();
      const [presetValue] = AMOUNTS[op][Number(preset.value)];
      const amount = presetValue || $("#amount-custom").value.trim();
      let path = "/deposits";
      let body = { amount };
      if (op === "withdraw-ach") path = "/withdrawals";
      if (op === "withdraw-wire") {
        path = "/withdrawals";
        body = {
          method: "WIRE",
          amount,
          destination: { routingNumber: $("#wire-routing").value.trim(), accountNumber: $("#wire-account").value.trim(), bankName: $("#wire-bank").value.trim() },
        };
      }
      const label = `${SUBMIT_LABEL[op]} ${amount || "(no amount)"}`;
      action($("#money-submit"), "#money-error", label, async () => {
        const { status, body: txn } = await api("POST", path, { body, key: newKey(op) });
        upsertTxn(txn, { flash: true });
        scheduleBalance();
        render();
        return `${label}: ${status}, ${txn.status}`;
      });
    });
  }

  function setupLinking() {
    fillSelect($("#plaid-token"), PLAID_TOKENS, "#plaid-hint");
    $("#plaid-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const [token] = PLAID_TOKENS[Number($("#plaid-token").value)];
      action($("#link-plaid"), "#link-error", `Plaid link ${token}`, async () => {
        const { status, body } = await api("POST", "/bank-accounts", { body: { processorToken: token }, key: newKey("link") });
        upsertAccount(body, { flash: true });
        render();
        return `Plaid link ${token}: ${status}, ${body.status}`;
      });
    });
    $("#link-hosted").addEventListener("click", (ev) => {
      action(ev.currentTarget, "#link-error", "hosted link session", async () => {
        const back = new URL("/demo", location.origin);
        back.searchParams.set("party", state.party);
        const { body } = await api("POST", "/link-sessions", { body: { redirectUri: back.toString() }, key: newKey("link-session") });
        // The consumer leaves for Bakkt's page; it sends the browser back with the outcome.
        location.assign(body.linkUrl);
        return "hosted link session: opening Bakkt's page";
      });
    });
  }

  // Again once the service's settings are known: the hints name its attempts and timeouts.
  function fillFaults() {
    const select = $("#fault-preset");
    const chosen = select.value || "0";
    const presets = faultPresets(state.config);
    select.replaceChildren(...presets.map((p, i) => h("option", { value: i }, p.label)));
    select.value = chosen;
    const hint = () => {
      $("#fault-hint").textContent = (presets[Number(select.value)] || {}).hint || "";
    };
    select.onchange = hint;
    hint();
  }

  function setupSandbox() {
    for (const button of document.querySelectorAll("[data-advance]")) {
      button.addEventListener("click", () => {
        const days = Number(button.dataset.advance);
        action(button, "#sandbox-error", `advance the clock ${days} day(s)`, async () => {
          const { body } = await sandbox("POST", "clock/advance", { days });
          state.clock = body;
          renderSandbox();
          return `sandbox: clock advanced ${days} business day(s), now day ${Number(body.businessDays).toFixed(2)}`;
        });
      });
    }
    for (const button of document.querySelectorAll("[data-party-status]")) {
      button.addEventListener("click", () => {
        const status = button.dataset.partyStatus;
        action(button, "#sandbox-error", `party status ${status}`, async () => {
          await sandbox("POST", `parties/${encodeURIComponent(state.party)}/status`, { status });
          return `sandbox: party set to ${status}; Bakkt's PARTY_EVENT is on its way`;
        });
      });
    }
    const presets = () => faultPresets(state.config);
    fillFaults();
    $("#fault-inject").addEventListener("click", (ev) => {
      const preset = presets()[Number($("#fault-preset").value)];
      action(ev.currentTarget, "#sandbox-error", `inject ${preset.body.mode}`, async () => {
        await sandbox("POST", "faults", preset.body);
        await refreshSandbox();
        renderSandbox();
        return `sandbox: fault injected (${preset.label})`;
      });
    });
    $("#fault-clear").addEventListener("click", (ev) => {
      action(ev.currentTarget, "#sandbox-error", "clear faults", async () => {
        await sandbox("DELETE", "faults");
        await refreshSandbox();
        renderSandbox();
        return "sandbox: faults cleared";
      });
    });
  }

  // --- choosing the party ------------------------------------------------------------------------

  async function openParty(ref) {
    ref = ref.trim();
    if (!ref) return;
    stopFeed();
    Object.assign(state, { party: ref, token: null, partyInfo: null, balance: null });
    state.accounts.clear();
    state.txns.clear();
    state.expanded.clear();
    state.lastErrors.clear();
    $("#events").replaceChildren();
    $("#banner").hidden = true;
    $("#party-input").value = ref;
    const url = new URL(location.href);
    url.search = "";
    url.searchParams.set("party", ref);
    history.replaceState(null, "", url);
    $("#welcome").hidden = true;
    $("#app").hidden = false;
    render();
    try {
      await fetchToken();
    } catch (err) {
      setFeed("error", "no token");
      showBanner(`No token for ${ref}: ${err.describe()}`, true);
      log("error", `development token for ${ref}: ${err.describe()}`);
      return;
    }
    log("ok", `opened party ${ref} with a development token`);
    startFeed();
  }

  function showBanner(text, bad) {
    const el = $("#banner");
    el.hidden = false;
    el.className = bad ? "banner bad" : "banner";
    el.replaceChildren(
      h("span", {}, text),
      h("button", { type: "button", class: "mini secondary", "aria-label": "Dismiss", onclick: () => { el.hidden = true; } }, "×"),
    );
  }

  async function init() {
    setupLinking();
    setupMoneyForm();
    setupSandbox();
    request("GET", "/demo/config")
      .then(({ body }) => {
        state.config = body;
        fillFaults();
      })
      .catch((err) => log("error", `demo config: ${err.describe ? err.describe() : err}`));

    $("#party-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      openParty($("#party-input").value);
    });
    $("#party-new").addEventListener("click", () => {
      openParty(`demo-${Math.random().toString(36).slice(2, 8)}`);
    });

    const params = new URLSearchParams(location.search);
    const party = params.get("party");
    // Back from Bakkt's hosted page: it adds the link request's ref and its outcome.
    const linkStatus = params.get("status");
    const linkRef = params.get("partnerTransactionRef");
    if (party) {
      await openParty(party);
      if (linkStatus) {
        showBanner(`Back from Bakkt's hosted link page: ${linkStatus} (link request ${linkRef || "?"}). ${linkStatus === "LINKED" ? "Bakkt's webhook completes the link below." : ""}`, linkStatus !== "LINKED");
        log(linkStatus === "LINKED" ? "ok" : "error", `hosted link page returned status=${linkStatus}`);
      }
    }
  }

  document.addEventListener("DOMContentLoaded", init);
})();
