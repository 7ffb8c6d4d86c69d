-- Version 3: what a lease's holder said of itself beside its host (the program and its
-- process id) and the address it connected from, for the admins' `tally status --all`.
ALTER TABLE leases ADD COLUMN program TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN pid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN address TEXT NOT NULL DEFAULT '';
