-- wrk script: replays a request plan written by benchmarks/load.py, one request a line:
--   METHOD <tab> PATH <tab> "Name: value" headers joined by \31 <tab> BODY
-- "{n}" anywhere in a line becomes a tag unique in this run (a fresh Idempotency-Key per
-- request). Lines are sent in order and the plan wraps around. The argument after "--" is the
-- plan file.
-- done() prints one line, "BENCH_JSON {...}", that load.py reads.

local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
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
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"seconds":%.6f,"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,'
      .. '"max_ms":%.3f,"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"statuses":{%s}}\n',
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(90) / 1e3, latency:percentile(99) / 1e3,
    latency.max / 1e3, e.connect, e.read, e.write, e.timeout, table.concat(parts, ",")))
end
