-- Every instance on this database says it is there each time it takes, renews or asks for the
-- lease, and until when (one lease length from then); a clean stop deletes its row. So
-- `copy-history` finds the followers, and `linkwatch once`, whatever `application_name` their
-- connections carry: a follower would take the lease right after a copy, with the database
-- identity it read before it.
CREATE TABLE lease_instances (
    holder     text PRIMARY KEY,
    seen_until timestamptz NOT NULL
);
