-- wrk script: POST /v1/login with one registered account, counting responses by status.
--
-- The credentials come from LOGIN_EMAIL / LOGIN_PASSWORD (benches/run.sh registers that
-- account first). At the end it prints, besides wrk's own summary:
--   status_counts 200=<n> 503=<n> ...
--   ok_2xx=<n>
--   non_2xx=<n>
-- (wrk's own "Non-2xx or 3xx responses" line only appears when there are some, and does not
-- count 3xx; this one counts every status outside 200-299.)

local email = os.getenv("LOGIN_EMAIL") or "bench@example.com"
local password = os.getenv("LOGIN_PASSWORD") or "wrk-bench Tessera 2026 horse staple"

local function json_string(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

wrk.method = "POST"
wrk.path = "/v1/login"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
wrk.body = '{"email":' .. json_string(email) .. ',"password":' .. json_string(password) .. '}'

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses")
    for status, n in pairs(counts) do
      totals[status] = (totals[status] or 0) + n
    end
  end
  local keys = {}
  for status in pairs(totals) do
    table.insert(keys, status)
  end
  table.sort(keys)
  local parts, ok, non2xx = {}, 0, 0
  for _, status in ipairs(keys) do
    table.insert(parts, status .. "=" .. totals[status])
    if status >= 200 and status <= 299 then
      ok = ok + totals[status]
    else
      non2xx = non2xx + totals[status]
    end
  end
  io.write("status_counts " .. table.concat(parts, " ") .. "\n")
  io.write("ok_2xx=" .. ok .. "\n")
  io.write("non_2xx=" .. non2xx .. "\n")
end
