-- wrk script: a paced probe. Each connection waits PROBE_INTERVAL_MS (default 5) after a
-- response before it sends its next request, so the probe sees the latency a client of the
-- endpoint sees. An unpaced probe is a flood of its own: on two cores it takes a whole core
-- from the service it is meant to observe, and what it then measures is how that core is
-- shared, not how long one request waits.
--
-- wrk times each request from its first byte written to its response, not the pause before.

local interval = tonumber(os.getenv("PROBE_INTERVAL_MS") or "5")

function delay()
  return interval
end
