"""The Lua scripts of the Redis tier, one named constant each (every key of one call shares a
conversation's ``{hash tag}``, so each script touches one Redis Cluster slot).

A list is ``[header, "<row id>:<message json>", ...]``; the header is ``#1c`` when the list starts
at the conversation's first message and ``#1p`` when it is a trimmed tail.
"""

from __future__ import annotations

__all__ = ["APPEND", "APPEND_DROPPED", "APPEND_NO_LIST", "FILL"]

# The append's results besides the number of entries pushed.
APPEND_NO_LIST = -1  # nothing cached for the conversation: nothing to do
APPEND_DROPPED = -2  # the list did not end where the new rows begin: deleted, the next read refills

# Append committed rows to a list that exists, only where it verifiably continues it.
# KEYS[1] the list, KEYS[2] its fill lease.
# ARGV[1] the cap (entries kept), ARGV[2] the TTL in ms, then one pair per row in id order:
#   ARGV[2i+1] the id of the conversation's row just before it (0: none), ARGV[2i+2] the entry.
# A row newer than the list's last entry is pushed only if its predecessor is that entry; a row
# not newer must already be in the list. Anything else (a row committed while Redis was not
# reached, a lost commit acknowledgement, commits out of id order) deletes the list.
# Every call deletes the lease, so a fill that raced this write is not stored.
# Returns the number pushed, APPEND_NO_LIST or APPEND_DROPPED.
APPEND = """
redis.call('DEL', KEYS[2])
local function id_of(entry)
  return tonumber(string.match(entry, '^(%d+):'))
end
local function holds(id)
  local n = redis.call('LLEN', KEYS[1])
  for i = n - 1, 1, -1 do
    local found = id_of(redis.call('LINDEX', KEYS[1], i))
    if found == nil or found < id then return false end
    if found == id then return true end
  end
  return false
end
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return -1 end
local last_id = id_of(last) or 0
local pushed = 0
for i = 3, #ARGV, 2 do
  local before = tonumber(ARGV[i])
  local entry = ARGV[i + 1]
  local id = id_of(entry)
  if id == nil then
    redis.call('DEL', KEYS[1])
    return -2
  end
  if id > last_id then
    if before ~= last_id then
      redis.call('DEL', KEYS[1])
      return -2
    end
    redis.call('RPUSH', KEYS[1], entry)
    last_id = id
    pushed = pushed + 1
  elseif id < last_id and not holds(id) then
    redis.call('DEL', KEYS[1])
    return -2
  end
end
local extra = redis.call('LLEN', KEYS[1]) - 1 - tonumber(ARGV[1])
if extra > 0 then
  redis.call('LSET', KEYS[1], extra, '#1p')
  redis.call('LTRIM', KEYS[1], extra, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return pushed
"""

# Write a list read from Postgres, if the filler's lease still holds (no write came between).
# KEYS[1] the list, KEYS[2] its fill lease.
# ARGV[1] the lease token, ARGV[2] the TTL in ms, ARGV[3] the header, ARGV[4..] the entries.
# Returns 1 when written, 0 when the lease was gone.
FILL = """
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[1])
local n = #ARGV
local i = 3
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('RPUSH', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
