-- Takes the lock of each key $1 (sorted; a kind prefix each) until the transaction ends: one
-- claim at a time counts and takes a key's room.
SELECT count(pg_advisory_xact_lock(hashtextextended(k, 7461))) FROM unnest($1::text[]) AS k
