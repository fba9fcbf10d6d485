-- ARGV: offset_ms, key... ; returns the keys that need a reconcile message.
for i = 2, #ARGV do mark_key(ARGV[i]) end
return schedule
