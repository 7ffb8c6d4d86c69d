-- Version 7: prerequisites (SPEC R18). A checkout of `feature` also takes a seat of
-- `requires`; that seat's lease names the lease whose checkout took it (`taken_with`), so
-- that it ends with it, after a restart too.
CREATE TABLE feature_requires (
    feature  TEXT NOT NULL,
    requires TEXT NOT NULL,
    PRIMARY KEY (feature, requires)
);
ALTER TABLE leases ADD COLUMN taken_with BLOB;
