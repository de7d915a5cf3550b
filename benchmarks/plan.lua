-- wrk script: replays a request plan written by benchmarks/load.py, one request a line:
--   METHOD <tab> PATH <tab> "Name: value" headers joined by \31 <tab> BODY
-- "{n}" anywhere in a line becomes a tag unique in this run (a fresh Idempotency-Key per
-- request). Lines are sent in order and the plan wraps around. The argument after "--" is the
-- plan file, the one after it the timeout in milliseconds (as given to wrk's --timeout).
-- done() prints one line, "BENCH_JSON {...}", that load.py reads.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  TIMEOUT_MS = tonumber(args[2] or "5000")
  requests, templates = {}, {}
  for line in io.lines(args[1]) do
    local method, path, head, body = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = {}
    for pair in string.gmatch(head, "[^\31]+") do
      local name, value = pair:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    if body == "" then body = nil end
    if line:find("{n}", 1, true) then
      table.insert(requests, false)
      templates[#requests] = { method, path, headers, body }
    else
      table.insert(requests, wrk.format(method, path, headers, body))
    end
  end
  sent, statuses = 0, {}
end

local function fill(text, tag)
  if text == nil then return nil end
  return (text:gsub("{n}", tag))
end

function request()
  sent = sent + 1
  local i = (sent - 1) % #requests + 1
  local ready = requests[i]
  if ready then return ready end
  local t = templates[i]
  local tag = tid .. "-" .. sent
  local headers = {}
  for name, value in pairs(t[3]) do headers[name] = fill(value, tag) end
  return wrk.format(t[1], fill(t[2], tag), headers, fill(t[4], tag))
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- A request unanswered within wrk's timeout is counted as a timeout and left out of the latency
-- histogram (so is an answer that came later, though its status is counted), so percentiles of
-- the histogram alone flatter a slow run, and read 0 when nothing was answered in time. Here a
-- percentile is taken over the answers and the timeouts together, the latter ranked last: one
-- that falls among them is reported as the timeout and flagged "censored" (the true value is at
-- least that). wrk counts a request still outstanding at each of its 2 s checks, and a late
-- answer is counted both ways, so the censoring can only err on the slow side.
local function percentiles(latency, answered, timeouts, timeout_ms)
  local total = answered + timeouts
  local out, censored = {}, {}
  for _, q in ipairs({ 50, 90, 99 }) do
    local rank = total * q / 100
    if total == 0 then
      out[q], censored[q] = 0, false
    elseif rank > answered or latency.max == 0 then
      out[q], censored[q] = timeout_ms, true
    else
      out[q], censored[q] = latency:percentile(math.min(100, 100 * rank / answered)) / 1e3, false
    end
  end
  return out, censored
end

function done(summary, latency, requests)
  local codes = {}
  for _, thread in ipairs(threads) do
    for code, count in pairs(thread:get("statuses")) do
      codes[code] = (codes[code] or 0) + count
    end
  end
  local parts = {}
  for code, count in pairs(codes) do
    table.insert(parts, string.format('"%d":%d', code, count))
  end
  local e = summary.errors
  -- init() ran in the threads' Lua states, not in this one.
  local p, censored =
    percentiles(latency, summary.requests, e.timeout, threads[1]:get("TIMEOUT_MS"))
  local flags = {}
  for _, q in ipairs({ 50, 90, 99 }) do
    if censored[q] then table.insert(flags, string.format('"p%d_ms"', q)) end
  end
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"seconds":%.6f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,'
      .. '"max_ms":%.3f,"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"statuses":{%s},"censored":[%s]}\n',
    summary.requests, summary.duration / 1e6, p[50], p[90], p[99],
    latency.max / 1e3, e.connect, e.read, e.write, e.timeout, table.concat(parts, ","),
    table.concat(flags, ",")))
end
