-- wrk script: the refresh grant (POST /v1/token, grant_type=refresh_token) with rotating,
-- single-use refresh tokens.
--
-- wrk does not tell request()/response() which connection they serve, so the per-connection
-- state is kept as a per-thread pool of live tokens: every request takes one token out of
-- the pool, every 200 puts the rotated token from its body back. Each token is used exactly
-- once and each chain of rotations goes on until the run ends, which is the same load as
-- "each connection refreshes its own session over and over".
--
-- Environment:
--   REFRESH_TOKENS_FILE  one refresh token per line (benches/run.sh logs in that many times);
--                        thread k of n takes lines k, k+n, k+2n, ...; give each thread more
--                        tokens than it has connections (wrk also calls request() once to
--                        probe the script before the run, which uses up one token)
--   REFRESH_THREADS      the -t given to wrk
--
-- At the end it prints, besides wrk's own summary:
--   status_counts 200=<n> 400=<n> ...
--   refreshed=<n>        200 answers that carried a new refresh token
--   non_200=<n>
--   starved=<n>          requests sent without a token (the pool of a thread ran dry after
--                        failures); they go to /healthz and are not counted as refreshes
--   first_error <status> <body>   the first non-200 answer, if any

local threads = {}
local nthreads_seen = 0

function setup(thread)
  nthreads_seen = nthreads_seen + 1
  thread:set("id", nthreads_seen)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  refreshed = 0
  starved = 0
  first_error = ""
  pool = {}
  local n = tonumber(os.getenv("REFRESH_THREADS") or "1")
  local path = os.getenv("REFRESH_TOKENS_FILE")
  if path == nil then
    error("REFRESH_TOKENS_FILE is not set")
  end
  local f = assert(io.open(path, "r"))
  local line_no = 0
  for line in f:lines() do
    if line ~= "" then
      if line_no % n == (id - 1) then
        table.insert(pool, line)
      end
      line_no = line_no + 1
    end
  end
  f:close()
  loaded = #pool
end

local headers = {
  ["Content-Type"] = "application/x-www-form-urlencoded",
  ["Accept"] = "application/json",
}

function request()
  local token = table.remove(pool)
  if token == nil then
    starved = starved + 1
    return wrk.format("GET", "/healthz")
  end
  -- Refresh tokens are tsr_ + base64url: nothing to percent-encode.
  return wrk.format("POST", "/v1/token", headers,
    "grant_type=refresh_token&refresh_token=" .. token)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 then
    local token = body:match('"refresh_token"%s*:%s*"(tsr_[%w_%-]+)"')
    if token ~= nil then
      refreshed = refreshed + 1
      table.insert(pool, token)
    end
  elseif first_error == "" then
    first_error = status .. " " .. string.gsub(body or "", "%s+", " ")
  end
end

function done(summary, latency, requests)
  local totals, total_refreshed, total_starved, loaded_all, err = {}, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + n
    end
    total_refreshed = total_refreshed + thread:get("refreshed")
    total_starved = total_starved + thread:get("starved")
    loaded_all = loaded_all + thread:get("loaded")
    if err == "" then
      err = thread:get("first_error")
    end
  end
  local keys = {}
  for status in pairs(totals) do
    table.insert(keys, status)
  end
  table.sort(keys)
  local parts, non200 = {}, 0
  for _, status in ipairs(keys) do
    table.insert(parts, status .. "=" .. totals[status])
    if status ~= 200 then
      non200 = non200 + totals[status]
    end
  end
  io.write("status_counts " .. table.concat(parts, " ") .. "\n")
  io.write("tokens_loaded=" .. loaded_all .. "\n")
  io.write("refreshed=" .. total_refreshed .. "\n")
  io.write("non_200=" .. non200 .. "\n")
  io.write("starved=" .. total_starved .. "\n")
  if err ~= "" then
    io.write("first_error " .. err .. "\n")
  end
end
