//! The Lua scripts that make each multi-key change atomic inside Redis: an offset is assigned,
//! appended to history and published in one step, so offsets are consecutive across nodes and
//! pub/sub carries them in offset order.

use std::sync::LazyLock;

use redis::Script;

/// Shared helpers: an entry id `<offset>-0` back to its offset, and dropping history entries
/// older than a cutoff (entries carry their publish time in field `t`).
const HELPERS: &str = r#"
local function offset_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

local function field(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end

local function trim_expired(hist, cutoff)
  local first = redis.call('xrange', hist, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(field(first[1][2], 't')) > cutoff then return end
  while true do
    local batch = redis.call('xrange', hist, '-', '+', 'COUNT', 64)
    if #batch == 0 then return end
    for _, entry in ipairs(batch) do
      if tonumber(field(entry[2], 't')) > cutoff then
        redis.call('xtrim', hist, 'MINID', entry[1])
        return
      end
    end
    redis.call('xtrim', hist, 'MINID', (offset_of(batch[#batch][1]) + 1) .. '-0')
  end
end

-- The stream's epoch, starting a new stream (empty history) when it has none.
local function ensure_stream(meta, hist, new_epoch, meta_ttl)
  local epoch = redis.call('hget', meta, 'e')
  if not epoch then
    epoch = new_epoch
    redis.call('del', hist)
    redis.call('hset', meta, 'e', epoch, 't', 0)
  end
  redis.call('expire', meta, meta_ttl)
  return epoch
end
"#;

/// KEYS: meta, history. ARGV: pub/sub channel, data, history size, history TTL, stream idle
/// TTL, a new epoch (used when the stream has none), now (Unix seconds).
/// Returns `{offset, epoch}`.
pub(crate) static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}{}",
        r#"
local meta, hist = KEYS[1], KEYS[2]
local size, ttl, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[7])
local epoch = ensure_stream(meta, hist, ARGV[6], tonumber(ARGV[5]))
local top = redis.call('hincrby', meta, 't', 1)
if size > 0 then
  redis.call('xadd', hist, 'MAXLEN', size, top .. '-0', 'd', ARGV[2], 't', now)
  redis.call('expire', hist, ttl)
  trim_expired(hist, now - ttl)
else
  redis.call('del', hist)
end
redis.call('publish', ARGV[1], 'm' .. top .. ' ' .. epoch .. ' ' .. ARGV[2])
return {top, epoch}
"#
    ))
});

/// KEYS: meta, history. ARGV: an epoch to answer when the channel has no stream, now, history
/// TTL, since offset (empty for none), since epoch, limit (empty for none).
/// Returns `{top, epoch, complete, offset1, data1, offset2, data2, ...}`.
pub(crate) static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}{}",
        r#"
local meta, hist = KEYS[1], KEYS[2]
-- Reading never starts a stream (spec section 8): an unstarted channel answers offset 0 of
-- an epoch that is not kept; offset 0 had seen nothing, so it misses nothing.
local epoch = redis.call('hget', meta, 'e')
if not epoch then
  if ARGV[4] == '' or tonumber(ARGV[4]) == 0 then return {0, ARGV[1], 1} end
  return {0, ARGV[1], 0}
end
local top = tonumber(redis.call('hget', meta, 't'))
trim_expired(hist, tonumber(ARGV[2]) - tonumber(ARGV[3]))
local limit = tonumber(ARGV[6])
local entries = {}
local complete = 1
if ARGV[4] ~= '' then
  local since = tonumber(ARGV[4])
  -- Offset 0 has seen nothing, so it continues any epoch.
  if (ARGV[5] ~= epoch and since ~= 0) or since > top then return {top, epoch, 0} end
  if since == top then return {top, epoch, 1} end
  local first = redis.call('xrange', hist, '-', '+', 'COUNT', 1)
  if #first == 0 or offset_of(first[1][1]) > since + 1 then complete = 0 end
  if limit == nil then
    entries = redis.call('xrange', hist, (since + 1) .. '-0', '+')
  elseif limit > 0 then
    entries = redis.call('xrange', hist, (since + 1) .. '-0', '+', 'COUNT', limit)
  end
elseif limit == nil then
  entries = redis.call('xrange', hist, '-', '+')
elseif limit > 0 then
  local newest = redis.call('xrevrange', hist, '+', '-', 'COUNT', limit)
  for i = #newest, 1, -1 do entries[#entries + 1] = newest[i] end
end
local out = {top, epoch, complete}
for _, entry in ipairs(entries) do
  out[#out + 1] = offset_of(entry[1])
  out[#out + 1] = field(entry[2], 'd')
end
return out
"#
    ))
});

/// KEYS: room members, room metas, room join counter, the joining node's holdings.
/// ARGV: peer id, member value, most peers, meta (empty for none), holding entry.
/// Returns nil when the room is full, else `{members before (flat hash), metas (flat hash)}`.
pub(crate) static ROOM_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local before = redis.call('hgetall', KEYS[1])
if #before / 2 >= tonumber(ARGV[3]) then return false end
local seq = redis.call('incr', KEYS[3])
redis.call('hset', KEYS[1], ARGV[1], seq .. '|' .. ARGV[2])
if ARGV[4] ~= '' then redis.call('hset', KEYS[2], ARGV[1], ARGV[4]) end
redis.call('sadd', KEYS[4], ARGV[5])
return {before, redis.call('hgetall', KEYS[2])}
"#,
    )
});

/// Whether any value of hash `key` begins with `marker` (after `sep`, when given): whether a
/// node still holds members there.
const HOLDS: &str = r#"
local function holds(key, marker, sep)
  for _, value in ipairs(redis.call('hvals', key)) do
    local from = 1
    if sep ~= '' then from = (string.find(value, sep, 1, true) or 0) + 1 end
    if string.sub(value, from, from + #marker - 1) == marker then return true end
  end
  return false
end
"#;

/// KEYS: room members, room metas, room join counter, the leaving peer's node holdings.
/// ARGV: peer id, that node's member marker, holding entry.
/// Returns 1 when the peer was there. The holding goes when the node has no peer left there.
pub(crate) static ROOM_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HOLDS}{}",
        r#"
local removed = redis.call('hdel', KEYS[1], ARGV[1])
redis.call('hdel', KEYS[2], ARGV[1])
if redis.call('hlen', KEYS[1]) == 0 then redis.call('del', KEYS[2], KEYS[3]) end
if not holds(KEYS[1], ARGV[2], '|') then redis.call('srem', KEYS[4], ARGV[3]) end
return removed
"#
    ))
});

/// KEYS: presence hash, the node's holdings. ARGV: client id, the node's member marker,
/// holding entry, whether to check the holding ("1": this node's last local member left).
/// Runs atomically, so a member added meanwhile either is seen or re-adds the holding.
pub(crate) static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HOLDS}{}",
        r#"
redis.call('hdel', KEYS[1], ARGV[1])
if ARGV[4] == '1' and not holds(KEYS[1], ARGV[2], '') then
  redis.call('srem', KEYS[2], ARGV[3])
end
return 1
"#
    ))
});

/// KEYS: room members, room metas. ARGV: peer id, meta (empty to clear).
/// Returns nil when the peer is not in the room, else its member value.
pub(crate) static ROOM_UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local member = redis.call('hget', KEYS[1], ARGV[1])
if not member then return false end
if ARGV[2] == '' then
  redis.call('hdel', KEYS[2], ARGV[1])
else
  redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
end
return member
"#,
    )
});

/// A subscribed channel's stream is started, so its subscribers and its first publish agree on
/// the epoch. KEYS: meta, history. ARGV: a new epoch, stream idle TTL.
pub(crate) static START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}{}",
        r#"
return ensure_stream(KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2]))
"#
    ))
});

/// When its last subscriber on a node leaves, a stream nothing was published to is dropped:
/// readers leave nothing behind. KEYS: meta, history.
pub(crate) static DROP_UNPUBLISHED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('hget', KEYS[1], 't') == '0' then redis.call('del', KEYS[1], KEYS[2]) end
return 0
"#,
    )
});
