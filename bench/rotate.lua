-- wrk script for dev/bench:  wrk ... -s bench/rotate.lua http://HOST:PORT -- LISTFILE
-- GETs the URL paths of LISTFILE (one per line, e.g. /abc...xyz.narinfo) in
-- turn on every connection, each thread from another offset, and prints one
-- machine-readable "WRK key=value ..." line at the end (latencies in µs).
--
-- WRK_PAUSE_MS=N (environment): every connection waits N ms after each
-- answer before its next request (wrk's delay()), so the offered load is
-- about CONNS x 1000 / (N + latency) requests/s whatever the server's speed:
-- latency at the same load for every server, not at each one's saturation.
local counter = 0
local pause = tonumber(os.getenv("WRK_PAUSE_MS") or "")

if pause then
  function delay()
    return pause
  end
end

function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function init(args)
  local file = args[1] or error("usage: wrk ... -s rotate.lua URL -- LISTFILE")
  reqs = {}
  for line in io.lines(file) do
    if #line > 0 then reqs[#reqs + 1] = wrk.format("GET", line) end
  end
  if #reqs == 0 then error("no URLs in " .. file) end
  i = ((tid or 1) - 1) * 7919 % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRK requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d status=%d timeout=%d " ..
    "p50_us=%d p90_us=%d p99_us=%d max_us=%d mean_us=%.1f\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
