//! The Lua scripts the store runs. Each touches one key, so each is Cluster-safe.

/// Deletes an entry only if it was stored at or before a purge (ARGV[1], microseconds): the
/// stored-at time is bytes 5..12 of the entry format, read with GETRANGE so large values are not
/// copied. Single key, so it is Cluster-safe.
pub(super) const DELETE_IF_OLDER: &str = r"
local h = redis.call('GETRANGE', KEYS[1], 0, 11)
if string.len(h) < 12 or string.sub(h, 1, 2) ~= 'TS' then return 0 end
local t = 0
for i = 5, 12 do t = t * 256 + string.byte(h, i) end
if t <= tonumber(ARGV[1]) then return redis.call('UNLINK', KEYS[1]) end
return 0
";

/// Replaces an entry with its soft-purged copy (ARGV[2], expiring in ARGV[3] ms) only if it
/// is still the entry that was read: same stored-at time (ARGV[1], microseconds, bytes 5..12).
/// A write that landed since the read is newer than the purge and is left alone.
pub(super) const REPLACE_IF_SAME: &str = r"
local h = redis.call('GETRANGE', KEYS[1], 0, 11)
if string.len(h) < 12 or string.sub(h, 1, 2) ~= 'TS' then return 0 end
local t = 0
for i = 5, 12 do t = t * 256 + string.byte(h, i) end
if t ~= tonumber(ARGV[1]) then return 0 end
if tonumber(ARGV[3]) <= 0 then return redis.call('UNLINK', KEYS[1]) end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

/// INCRBY that sets the TTL (ARGV[2], milliseconds, 0 for none) only when it creates the counter.
pub(super) const INCR_WITH_TTL: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if existed == 0 and tonumber(ARGV[2]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return v
";
