"""The Lua scripts of the Redis session store (``redis_store.py``), one atomic step each.

Under Redis's ``maxmemory`` (policy noeviction) a script whose first write could grow memory
(SET, HSET, ZADD) is refused with an OOM error; one that only deletes or renews (DEL, ZREM,
PEXPIRE) still runs, so deleting a session and renewing its TTL work on a full store.
"""

# Lua: forget (and announce) the sessions of the index whose hash Redis has expired.
# KEYS[1] index; ARGV[1] key prefix, ARGV[2] channel. Leaves `removed` (a table) defined.
_PRUNE = """
local removed = {}
for _, sid in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. 'session:' .. sid) == 0 then
    redis.call('ZREM', KEYS[1], sid)
    redis.call('DEL', ARGV[1] .. 'keys:' .. sid)
    redis.call('PUBLISH', ARGV[2], sid)
    table.insert(removed, sid)
  end
end
"""

PRUNE_SCRIPT = _PRUNE + "return removed\n"

# Lua: create a session unless the live ones fill max_sessions (live sessions are never
# evicted). KEYS: index, new hash, new keys blob.
# ARGV: prefix, channel, id, token hash, now (ms), ttl (ms), max sessions, evaluation keys.
# Returns the ids of the expired sessions it forgot, or, when full, the last use (ms) of the
# least recently used live session (a number).


def _return_when_full(max_sessions_arg: int) -> str:
    """Lua: when the index KEYS[1] holds ARGV[n] sessions, return its least recent last use."""
    return f"""
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[{max_sessions_arg}]) then
  return tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
end
"""


CREATE_SCRIPT = (
    _PRUNE
    + _return_when_full(7)
    + """redis.call('SET', KEYS[3], ARGV[8], 'PX', ARGV[6])
redis.call('HSET', KEYS[2], 'token_sha256', ARGV[4], 'created', ARGV[5],
           'inputs_version', 0, 'output_version', -1)
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[1], ARGV[5], ARGV[3])
return removed
"""
)

# Lua: store one party's ciphertext, bump the inputs version, drop the now stale verdict.
# KEYS: hash. ARGV: field, ciphertext. Returns the new version, or -1 for no such session.
PUT_INPUT_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HDEL', KEYS[1], 'output')
redis.call('HSET', KEYS[1], 'output_version', -1)
return redis.call('HINCRBY', KEYS[1], 'inputs_version', 1)
"""

# Lua: compare-and-set of the verdict. KEYS: hash. ARGV: output, inputs version it came from.
# Returns 1 stored, 0 the inputs changed meanwhile, -1 no such session.
STORE_OUTPUT_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'inputs_version')
if not current then return -1 end
if tonumber(current) ~= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'output', ARGV[1], 'output_version', ARGV[2])
return 1
"""

# Lua: take one of a client's session slots in its sliding window (shared by every replica).
# KEYS: the client's slots (zset). ARGV: now (ms), window (ms), limit, slot id.
# Returns -1 when a slot was taken, else the time (ms) of the client's oldest slot.
QUOTA_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return tonumber(redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2])
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return -1
"""

# Lua: delete a session and announce it. KEYS: index, hash, blob. ARGV: id, channel.
DELETE_SCRIPT = """
local gone = redis.call('DEL', KEYS[2], KEYS[3])
redis.call('ZREM', KEYS[1], ARGV[1])
if gone > 0 then redis.call('PUBLISH', ARGV[2], ARGV[1]) end
return gone
"""

# Lua: renew a session's TTL and mark it used. KEYS: hash, blob, index. ARGV: ttl (ms), now (ms),
# id. PEXPIRE comes first: it never needs memory, so the renewal also runs on a full Redis.
RENEW_SCRIPT = """
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'XX', ARGV[2], ARGV[3])
return 1
"""

# Lua: whether a session could be created now (expired ones forgotten first). KEYS: index.
# ARGV: prefix, channel, max sessions. Returns -1 when there is room, else the last use (ms) of
# the least recently used live session.
ROOM_SCRIPT = _PRUNE + _return_when_full(3) + "return -1\n"
