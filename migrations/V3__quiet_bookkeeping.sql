-- Optimistic concurrency must not report a change that did not happen.
--
-- * An UPDATE that changes nothing (an empty PATCH) keeps the row's version
--   and updated_at, so a client's ETag stays valid.
-- * On iam.users, the login bookkeeping (failed_logins, locked_until) is not
--   an edit of the user: a wrong password typed by anyone must not make an
--   admin's pending edit of that user fail with 412.

CREATE OR REPLACE FUNCTION tenancy.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW IS NOT DISTINCT FROM OLD THEN
        RETURN NEW;
    END IF;
    NEW.updated_at := now();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

DROP TRIGGER touch ON iam.users;
CREATE TRIGGER touch BEFORE UPDATE ON iam.users FOR EACH ROW
    WHEN ((OLD.email, OLD.name, OLD.role, OLD.password_hash, OLD.active)
          IS DISTINCT FROM (NEW.email, NEW.name, NEW.role, NEW.password_hash, NEW.active))
    EXECUTE FUNCTION tenancy.touch();
