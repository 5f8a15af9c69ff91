-- Takes the lock of each key of $1 (a kind prefix each) that no other transaction holds, until
-- this one ends; the keys it took. One claim at a time counts and takes a key's room, and a
-- claim does not wait for a key another claim is taking (it leaves that key's steps to it, as
-- it skips the tasks others hold).
SELECT k FROM unnest($1::text[]) AS k WHERE pg_try_advisory_xact_lock(hashtextextended(k, 7461))
