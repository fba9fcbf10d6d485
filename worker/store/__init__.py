"""Everything kept in Redis: keys, Lua scripts, the projection, the mirror, the journal, the audit log, app configurations and what was learned of each app."""
