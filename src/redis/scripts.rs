//! The Lua scripts behind the bus operations that must be atomic on Redis 7.0.
//!
//! Why scripts: `XAUTOCLAIM` returns no delivery counts, and reading them
//! back with `XPENDING` afterwards races with other consumers (issue: a
//! claim reported 1 where `XPENDING` said 2). Each script reads the pending
//! row and moves the entry in one atomic step, so counts are exact in every
//! interleaving, and a retry delay or a dead-letter move is never half done.
//!
//! Retry delays longer than any lease: `XCLAIM ... TIME` cannot lie in the
//! future, so a delayed entry keeps its not-before time in a hash beside the
//! stream (`Keys::due`). A claim that meets it early re-parks it with
//! `XCLAIM ... TIME` so it reaches the idle threshold just when it is due.

use redis::Script;
use std::sync::LazyLock;

/// Server time in ms, shared by the scripts that need "now".
const NOW: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// Claim entries idle at least `min_idle` that are due, with exact counts.
///
/// KEYS: stream, due hash. ARGV: group, consumer, min_idle_ms, want,
/// then either `auto` (scan the pending list) or `ids` followed by the ids.
/// Returns `{ {id, fields, count}..., }, { deleted ids... }`.
pub(crate) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NOW}
local stream, due = KEYS[1], KEYS[2]
local group, consumer = ARGV[1], ARGV[2]
local min_idle, want = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, deleted = {{}}, {{}}
local function consider(row)
  local id = row[1]
  local nb = tonumber(redis.call('HGET', due, id) or '0')
  -- Times are whole ms, cut down: due only once `now` has passed `nb`, so
  -- the delay is never shortened by the part of a ms `now` dropped.
  if nb > 0 then nb = nb + 1 end
  if nb > now then
    local at = nb - min_idle
    if at > now then at = now end
    redis.call('XCLAIM', stream, group, row[2], 0, id, 'TIME', at, 'JUSTID')
    return
  end
  local n = row[4] + 1
  local got = redis.call('XCLAIM', stream, group, consumer, 0, id, 'RETRYCOUNT', n)
  if #got == 0 then
    deleted[#deleted + 1] = id
  else
    out[#out + 1] = {{got[1][1], got[1][2], n}}
  end
  if nb > 0 then redis.call('HDEL', due, id) end
end
if ARGV[5] == 'auto' then
  local start, budget = '-', want * 10 + 100
  while #out < want and budget > 0 do
    local rows = redis.call('XPENDING', stream, group, 'IDLE', min_idle, start, '+', math.min(budget, 100))
    if #rows == 0 then break end
    budget = budget - #rows
    for _, row in ipairs(rows) do
      if #out >= want then break end
      consider(row)
    end
    start = '(' .. rows[#rows][1]
  end
else
  for i = 6, #ARGV do
    local rows = redis.call('XPENDING', stream, group, 'IDLE', min_idle, ARGV[i], ARGV[i], 1)
    if #rows == 1 then consider(rows[1]) end
  end
end
return {{out, deleted}}
"#
    ))
});

/// Reset the idle time of the entries `consumer` still holds.
///
/// KEYS: stream. ARGV: group, consumer, ids... Returns the ids still held.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = {}
for i = 3, #ARGV do
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #row == 1 and row[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    held[#held + 1] = ARGV[i]
  end
end
return held
"#,
    )
});

/// Hand entries back: claimable at once (`unhandled`, delivery uncounted) or
/// after a delay (`retry`, count kept, not-before in the due hash).
///
/// KEYS: stream, due hash. ARGV: group, consumer, mode, delay_ms, ids...
/// Returns how many `consumer` held.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{NOW}
local held = 0
for i = 5, #ARGV do
  local id = ARGV[i]
  local row = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
  if #row == 1 and row[1][2] == ARGV[2] then
    held = held + 1
    local n = row[1][4]
    if ARGV[3] == 'unhandled' then
      if n > 0 then n = n - 1 end
      redis.call('HDEL', KEYS[2], id)
    else
      redis.call('HSET', KEYS[2], id, string.format('%.0f', now + tonumber(ARGV[4])))
    end
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'TIME', 0, 'RETRYCOUNT', n, 'JUSTID')
  end
end
return held
"#
    ))
});

/// Append a dead-letter record and ack the entry, or do nothing when it is
/// not pending.
///
/// KEYS: stream, dead-letter stream, due hash. ARGV: group, id, max_len,
/// body field, record. Returns the dead-letter id, or nil.
pub(crate) static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local row = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #row == 0 then return false end
local dead = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', ARGV[4], ARGV[5])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return dead
"#,
    )
});

/// Delete a consumer unless it holds entries (or `force`).
///
/// KEYS: stream. ARGV: group, consumer, force (`1`). Returns `{deleted, held}`.
pub(crate) static DELETE_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local held = 0
for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])) do
  local name, pending
  for j = 1, #c, 2 do
    if c[j] == 'name' then name = c[j + 1] elseif c[j] == 'pending' then pending = c[j + 1] end
  end
  if name == ARGV[2] then held = pending end
end
if held > 0 and ARGV[3] ~= '1' then return {0, held} end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return {1, held}
"#,
    )
});

/// Append entries under [`TrimPolicy::KeepUnacknowledged`](crate::TrimPolicy):
/// past the cap, trim exactly the entries every group has acknowledged
/// (`XTRIM MINID` at the lowest id some group still needs: its oldest
/// pending entry, or the one after its last delivered); a stream without
/// groups trims by length, to 90 % of the cap (`no_group_trim_len`). At the hard cap, reject or (`drop`) trim by length.
/// With `acked` = `1` (Redis 8.2+) the server's own `XTRIM MAXLEN = 0 ACKED`
/// does the group trim; if the server refuses it, the script computes the
/// safe point itself, so the flag can never cost an entry.
///
/// KEYS: stream. ARGV: max_len, hard_cap, `reject` | `drop`, body field, acked (`1` | `0`), bodies...
/// Returns `{'ok', length, ids...}` or `{'full', length}`.
pub(crate) static KEEP_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key = KEYS[1]
local max_len, hard_cap = tonumber(ARGV[1]), tonumber(ARGV[2])
local n = #ARGV - 5
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local len = redis.call('XLEN', key)
if len + n > max_len then
  local groups = redis.pcall('XINFO', 'GROUPS', key)
  if type(groups) ~= 'table' or groups.err then groups = {} end
  if #groups == 0 then
    redis.call('XTRIM', key, 'MAXLEN', '=', math.max(max_len - math.floor(max_len / 10) - n, 0))
  elseif ARGV[5] ~= '1' or type(redis.pcall('XTRIM', key, 'MAXLEN', '=', 0, 'ACKED')) ~= 'number' then
    local safe = nil
    for _, g in ipairs(groups) do
      local name, last
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] elseif g[j] == 'last-delivered-id' then last = g[j + 1] end
      end
      local ms, seq = parse(last)
      local need = string.format('%.0f-%.0f', ms, seq + 1)
      local p = redis.call('XPENDING', key, name)
      if p[1] > 0 and less(p[2], need) then need = p[2] end
      if safe == nil or less(need, safe) then safe = need end
    end
    redis.call('XTRIM', key, 'MINID', '=', safe)
  end
  len = redis.call('XLEN', key)
end
if len + n > hard_cap then
  if ARGV[3] ~= 'drop' then return {'full', len} end
  redis.call('XTRIM', key, 'MAXLEN', '=', math.max(hard_cap - n, 0))
end
local out = {'ok', 0}
for i = 6, #ARGV do out[#out + 1] = redis.call('XADD', key, '*', ARGV[4], ARGV[i]) end
out[2] = redis.call('XLEN', key)
return out
"#,
    )
});

/// Create a group with an exact `entries-read` (Redis 7.0 leaves it unknown
/// otherwise, and its lag then hides entries trimmed before delivery): the
/// stream's `entries-added` for `$`, 0 for `0` when nothing was ever removed.
///
/// KEYS: stream. ARGV: group, `$` | `0`. Returns 1 when created, 0 when it existed.
pub(crate) static CREATE_GROUP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local key, group, start = KEYS[1], ARGV[1], ARGV[2]
local added, len = 0, 0
if redis.call('EXISTS', key) == 1 then
  local info = redis.call('XINFO', 'STREAM', key)
  for j = 1, #info, 2 do
    if info[j] == 'entries-added' then added = info[j + 1] elseif info[j] == 'length' then len = info[j + 1] end
  end
end
local reply
if start == '$' then
  reply = redis.pcall('XGROUP', 'CREATE', key, group, '$', 'MKSTREAM', 'ENTRIESREAD', added)
elseif added == len then
  reply = redis.pcall('XGROUP', 'CREATE', key, group, start, 'MKSTREAM', 'ENTRIESREAD', 0)
else
  reply = redis.pcall('XGROUP', 'CREATE', key, group, start, 'MKSTREAM')
end
if type(reply) == 'table' and reply.err then
  if string.find(reply.err, 'BUSYGROUP') then return 0 end
  return redis.error_reply(reply.err)
end
return 1
"#,
    )
});
