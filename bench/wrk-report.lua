-- wrk script for make bench's http row: at the end, one line that the bench
-- parses: requests/s, latency p50 and p99 in microseconds, errors, requests.
-- SPDX-License-Identifier: MIT
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("bench-result %.1f %.1f %.1f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout, summary.requests))
end
