-- Version 3: the borrowable entitlement a floating borrow is charged to.
ALTER TABLE leases ADD COLUMN entitlement INTEGER;
