"""The leaner pieces the prototypes are built from: scripts, statements, helpers.

Each is written to be adopted as is (named constants with their KEYS/ARGV header).
"""

from __future__ import annotations

import uuid
from typing import Any

from langchain_core.messages import BaseMessage

from lc_hybrid_memory import codec

PROTO_PREFIX = "bench:proto:"
CAP = 50
TTL_MS = 3_600_000
LEASE_MS = 5_000

# The library's append script at the commit this bench was written against (KEYS[1] list,
# KEYS[2] lease; ARGV[1] cap, ARGV[2] ttl ms, ARGV[3..] entries): one string.match and one
# RPUSH per entry, then LLEN.
APPEND_LIBRARY = """
redis.call('DEL', KEYS[2])
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return -1 end
local last_id = tonumber(string.match(last, '^(%d+):')) or 0
local pushed = 0
for i = 3, #ARGV do
  local id = tonumber(string.match(ARGV[i], '^(%d+):'))
  if id == nil or id < last_id then
    redis.call('DEL', KEYS[1])
    return -2
  end
  if id > last_id then
    redis.call('RPUSH', KEYS[1], ARGV[i])
    last_id = id
    pushed = pushed + 1
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

# KEYS[1] list, KEYS[2] lease. ARGV[1] cap, ARGV[2] ttl ms, ARGV[3] id of the row just before
# the new ones ("0": none), ARGV[4..] entries in id order. The list's last entry must be that
# row, else the list is dropped (-2); -1 when the list does not exist; else entries appended.
# One variadic RPUSH (its reply is the new length: no LLEN), trim only when over the cap.
APPEND_AFTER = """
redis.call('DEL', KEYS[2])
local last = redis.call('LINDEX', KEYS[1], -1)
if not last then return -1 end
if (string.match(last, '^(%d+):') or '0') ~= ARGV[3] then
  redis.call('DEL', KEYS[1])
  return -2
end
local n = redis.call('RPUSH', KEYS[1], unpack(ARGV, 4))
local extra = n - 1 - tonumber(ARGV[1])
if extra > 0 then
  redis.call('LSET', KEYS[1], extra, '#1p')
  redis.call('LTRIM', KEYS[1], extra, -1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return #ARGV - 3
"""

# APPEND_AFTER that also returns the list's state after the append ("<header>:<last id>:<len>",
# as READ_IF_CHANGED computes it): {appended, state}.
APPEND_AFTER_STATE = APPEND_AFTER.replace(
    "return #ARGV - 3",
    "local head = redis.call('LINDEX', KEYS[1], 0)\n"
    "local last_id = string.match(ARGV[#ARGV], '^(%d+):')\n"
    "return {#ARGV - 3, head .. ':' .. last_id .. ':' .. redis.call('LLEN', KEYS[1])}",
)

# KEYS[1] list. ARGV[1] the state the caller holds ("" for none). Returns nil when the list
# is missing, {state} when it is unchanged, else {state, header, entries...}: an in-process
# copy of the decoded window is checked in one round trip with a ~20-byte reply, and the list
# is transferred and decoded only when it changed.
READ_IF_CHANGED = """
local head = redis.call('LINDEX', KEYS[1], 0)
if not head then return false end
local last = redis.call('LINDEX', KEYS[1], -1)
local state = head .. ':' .. (string.match(last, '^(%d+):') or '0') .. ':'
  .. redis.call('LLEN', KEYS[1])
if state == ARGV[1] then return {state} end
local items = redis.call('LRANGE', KEYS[1], 0, -1)
table.insert(items, 1, state)
return items
"""

# KEYS[1] list, KEYS[2] lease. ARGV[1] token, ARGV[2] lease ms.
# A hit returns the list; a miss takes the lease and returns {token} (or {} if another filler
# holds it): the LRANGE and the SET NX PX of a miss in one round trip.
READ_OR_LEASE = """
local items = redis.call('LRANGE', KEYS[1], 0, -1)
if #items > 0 then return items end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {false, ARGV[1]} end
return {false}
"""

# The library's fill script (KEYS[1] list, KEYS[2] lease; ARGV[1] token, ARGV[2] ttl ms,
# ARGV[3] header, ARGV[4..] entries).
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


def insert_sql(table: str, rows: int, *, placeholder: str = "%s") -> str:
    """The library's INSERT, pre-rendered for ``rows`` rows (psycopg2 ``%s`` or asyncpg ``$n``)."""
    values = []
    for r in range(rows):
        if placeholder == "%s":
            values.append("(%s, %s, %s, %s, %s)")
        else:
            b = r * 5
            values.append(f"(${b + 1}, ${b + 2}, ${b + 3}, ${b + 4}::jsonb, ${b + 5})")
    return (
        f'INSERT INTO "{table}" (conversation_id, role, content, payload, message_uid) VALUES '
        + ", ".join(values)
        + " ON CONFLICT (conversation_id, message_uid) DO NOTHING RETURNING id, message_uid"
    )


def insert_after_sql(table: str, rows: int) -> str:
    """The INSERT that also returns the id of the conversation's row just before the new ones
    (for ``APPEND_AFTER``), in the same statement and snapshot."""
    return (
        f'WITH prev AS (SELECT id FROM "{table}" WHERE conversation_id >= %s AND '
        "conversation_id <= %s ORDER BY conversation_id DESC, id DESC LIMIT 1), "
        f"ins AS ({insert_sql(table, rows)}) "
        "SELECT ins.id, ins.message_uid, (SELECT id FROM prev) FROM ins"
    )


def select_sql(table: str, placeholder: str = "%s") -> str:
    a, b, n = (placeholder,) * 3 if placeholder == "%s" else ("$1", "$1", "$2")
    return (
        f'SELECT id, payload::text FROM "{table}" WHERE conversation_id >= {a} AND '
        f"conversation_id <= {b} ORDER BY conversation_id DESC, id DESC LIMIT {n}"
    )


def encode_rows(sid: str, messages: list[BaseMessage]) -> tuple[list[Any], list[str]]:
    """Flat INSERT parameters and the payloads (codec as the library's)."""
    params: list[Any] = []
    payloads = []
    for m in messages:
        payload = codec.encode(m)
        payloads.append(payload)
        uid = m.id if m.id is not None else f"lchm-{uuid.uuid4().hex}"
        params += [sid, codec.role_of(m), codec.plain_text(m), payload, uid]
    return params, payloads


def entries_for(rows: list[tuple[int, str]]) -> list[str]:
    return [f"{i}:{p}" for i, p in rows]


def decode_entries(raw: list[bytes]) -> list[BaseMessage]:
    out = []
    for item in raw[1:]:
        _, _, payload = item.partition(b":")
        out.append(codec.decode(payload))
    return out


def fill_args(token: str, rows: list[tuple[int, str]], complete: bool) -> list[Any]:
    kept = rows[-CAP:]
    header = "#1c" if complete and len(kept) == len(rows) else "#1p"
    return [token, TTL_MS, header, *entries_for(kept)]


def copy_message(m: BaseMessage) -> BaseMessage:
    """A shallow copy, as pydantic's ``model_copy`` makes it (≈ 0.8 µs instead of 1.3 µs)."""
    new = object.__new__(type(m))
    object.__setattr__(new, "__dict__", m.__dict__.copy())
    object.__setattr__(new, "__pydantic_fields_set__", set(m.__pydantic_fields_set__))
    object.__setattr__(new, "__pydantic_extra__", m.__pydantic_extra__)
    object.__setattr__(new, "__pydantic_private__", m.__pydantic_private__)
    return new


class LocalWindows:
    """Decoded windows kept in process, keyed by conversation, checked by READ_IF_CHANGED.

    Callers get shallow copies (they may mutate messages). A write updates the copy from the
    messages it wrote and the state the append script returned, so the next read of this
    process decodes nothing. Another process's write changes the state: that read transfers
    and decodes the list, as today.
    """

    def __init__(self, r: Any, max_conversations: int = 10_000) -> None:
        from collections import OrderedDict

        self.read_if_changed = r.register_script(READ_IF_CHANGED)
        self.windows: OrderedDict[str, tuple[bytes, list[BaseMessage]]] = OrderedDict()
        self.max = max_conversations
        self.unchanged = False  # whether the last read was served without a transfer

    def read(self, key: str) -> list[BaseMessage] | None:
        known = self.windows.get(key)
        got = self.read_if_changed(keys=[key], args=[known[0] if known else b""])
        if got is None:
            return None  # a miss: the caller fills as today
        self.unchanged = len(got) == 1 and known is not None
        if self.unchanged:
            self.windows.move_to_end(key)
            messages = known[1]
        else:
            messages = decode_entries(got[1:])[-CAP:]
            self.remember(key, got[0], messages)
        return [copy_message(m) for m in messages]

    def remember(self, key: str, state: bytes, messages: list[BaseMessage]) -> None:
        self.windows[key] = (state, messages)
        self.windows.move_to_end(key)
        if len(self.windows) > self.max:
            self.windows.popitem(last=False)

    def wrote(self, key: str, state: bytes, written: list[BaseMessage]) -> None:
        known = self.windows.get(key)
        if known is not None:
            self.remember(key, state, (known[1] + [copy_message(m) for m in written])[-CAP:])
