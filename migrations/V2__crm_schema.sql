-- The CRM, one schema per bounded context, every tenant-owned table isolated
-- by Row-Level Security.
--
-- How isolation works:
-- * each API request runs in a transaction that calls iam.begin_request(),
--   which sets app.tenant_id / app.user_id for that transaction only;
-- * every tenant-owned table has RLS enabled AND forced, with one policy:
--   tenant_id = tenancy.current_tenant(); no tenant set → no rows at all;
-- * the API's role (pagodirecto_app) owns nothing and cannot bypass RLS;
-- * references between tables are composite foreign keys (tenant_id, id),
--   because foreign-key checks bypass RLS: a plain FK would let a crafted
--   request link to (and so probe for) another tenant's row;
-- * audit rows are written by triggers (SECURITY DEFINER), so no write
--   escapes the audit log and the API role cannot write or change it.

CREATE EXTENSION IF NOT EXISTS pgcrypto;
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE SCHEMA tenancy;
CREATE SCHEMA iam;
CREATE SCHEMA customers;
CREATE SCHEMA sales;
CREATE SCHEMA activities;
CREATE SCHEMA payments;
CREATE SCHEMA audit;

GRANT USAGE ON SCHEMA tenancy, iam, customers, sales, activities, payments, audit TO pagodirecto_app;

CREATE FUNCTION tenancy.current_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.tenant_id', true), '')::uuid $$;

CREATE FUNCTION tenancy.current_user_id() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;

-- Keeps updated_at and the optimistic-concurrency version current on every update.
CREATE FUNCTION tenancy.touch() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    NEW.updated_at := now();
    NEW.version := OLD.version + 1;
    RETURN NEW;
END
$$;

-- ─── tenancy ────────────────────────────────────────────────────────────────
CREATE TABLE tenancy.tenants (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE tenancy.tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenancy.tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY own_tenant ON tenancy.tenants USING (id = tenancy.current_tenant());
GRANT SELECT ON tenancy.tenants TO pagodirecto_app;

-- ─── iam ────────────────────────────────────────────────────────────────────
CREATE TABLE iam.users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id     uuid NOT NULL DEFAULT tenancy.current_tenant() REFERENCES tenancy.tenants (id),
    -- Stored lower-case; unique across tenants so login needs only the email.
    email         text NOT NULL UNIQUE CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    name          text NOT NULL DEFAULT '' CHECK (length(name) <= 200),
    role          text NOT NULL CHECK (role IN ('owner', 'admin', 'agent', 'viewer')),
    password_hash text NOT NULL,
    active        boolean NOT NULL DEFAULT true,
    failed_logins integer NOT NULL DEFAULT 0,
    locked_until  timestamptz,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE TRIGGER touch BEFORE UPDATE ON iam.users FOR EACH ROW EXECUTE FUNCTION tenancy.touch();

CREATE TABLE iam.refresh_tokens (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL DEFAULT tenancy.current_tenant(),
    user_id    uuid NOT NULL,
    -- Every token issued from one login shares a family; reuse of a spent
    -- token revokes the whole family.
    family_id  uuid NOT NULL,
    token_hash bytea NOT NULL UNIQUE,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, user_id) REFERENCES iam.users (tenant_id, id)
);
CREATE INDEX ON iam.refresh_tokens (family_id);

-- Failed logins per client address, shared by every instance on this database.
CREATE TABLE iam.login_throttle (
    client       text PRIMARY KEY,
    window_start timestamptz NOT NULL,
    failures     integer NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON iam.login_throttle TO pagodirecto_app;

-- ─── customers ──────────────────────────────────────────────────────────────
CREATE TABLE customers.customers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL DEFAULT tenancy.current_tenant() REFERENCES tenancy.tenants (id),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text CHECK (length(email) <= 254),
    phone       text CHECK (length(phone) <= 50),
    company     text CHECK (length(company) <= 200),
    notes       text CHECK (length(notes) <= 10000),
    archived_at timestamptz,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id)
);
CREATE INDEX customers_name_trgm ON customers.customers USING gin (name gin_trgm_ops);
CREATE INDEX customers_email_trgm ON customers.customers USING gin (email gin_trgm_ops);
CREATE INDEX customers_page ON customers.customers (tenant_id, created_at, id);
CREATE TRIGGER touch BEFORE UPDATE ON customers.customers FOR EACH ROW EXECUTE FUNCTION tenancy.touch();

CREATE TABLE customers.contacts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL DEFAULT tenancy.current_tenant(),
    customer_id uuid NOT NULL,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       text CHECK (length(email) <= 254),
    phone       text CHECK (length(phone) <= 50),
    title       text CHECK (length(title) <= 200),
    archived_at timestamptz,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers.customers (tenant_id, id)
);
CREATE INDEX contacts_name_trgm ON customers.contacts USING gin (name gin_trgm_ops);
CREATE INDEX contacts_email_trgm ON customers.contacts USING gin (email gin_trgm_ops);
CREATE INDEX contacts_page ON customers.contacts (tenant_id, created_at, id);
CREATE INDEX ON customers.contacts (tenant_id, customer_id);
CREATE TRIGGER touch BEFORE UPDATE ON customers.contacts FOR EACH ROW EXECUTE FUNCTION tenancy.touch();

-- ─── sales ──────────────────────────────────────────────────────────────────
CREATE TABLE sales.pipeline_stages (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  uuid NOT NULL DEFAULT tenancy.current_tenant() REFERENCES tenancy.tenants (id),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    position   integer NOT NULL,
    kind       text NOT NULL DEFAULT 'open' CHECK (kind IN ('open', 'won', 'lost')),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE sales.deals (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id      uuid NOT NULL DEFAULT tenancy.current_tenant(),
    customer_id    uuid NOT NULL,
    stage_id       uuid NOT NULL,
    title          text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    amount_minor   bigint NOT NULL CHECK (amount_minor >= 0),
    currency       char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    expected_close date,
    archived_at    timestamptz,
    version        integer NOT NULL DEFAULT 1,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers.customers (tenant_id, id),
    FOREIGN KEY (tenant_id, stage_id) REFERENCES sales.pipeline_stages (tenant_id, id)
);
CREATE INDEX deals_title_trgm ON sales.deals USING gin (title gin_trgm_ops);
CREATE INDEX deals_page ON sales.deals (tenant_id, created_at, id);
CREATE INDEX ON sales.deals (tenant_id, customer_id);
CREATE TRIGGER touch BEFORE UPDATE ON sales.deals FOR EACH ROW EXECUTE FUNCTION tenancy.touch();

-- ─── activities ─────────────────────────────────────────────────────────────
CREATE TABLE activities.activities (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id   uuid NOT NULL DEFAULT tenancy.current_tenant(),
    customer_id uuid NOT NULL,
    deal_id     uuid,
    kind        text NOT NULL CHECK (kind IN ('note', 'call', 'task')),
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 200),
    body        text CHECK (length(body) <= 10000),
    due_at      timestamptz,
    done        boolean NOT NULL DEFAULT false,
    archived_at timestamptz,
    version     integer NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers.customers (tenant_id, id),
    FOREIGN KEY (tenant_id, deal_id) REFERENCES sales.deals (tenant_id, id)
);
CREATE INDEX activities_subject_trgm ON activities.activities USING gin (subject gin_trgm_ops);
CREATE INDEX activities_page ON activities.activities (tenant_id, created_at, id);
CREATE INDEX ON activities.activities (tenant_id, customer_id);
CREATE TRIGGER touch BEFORE UPDATE ON activities.activities FOR EACH ROW EXECUTE FUNCTION tenancy.touch();

-- ─── payments ───────────────────────────────────────────────────────────────
CREATE TABLE payments.payments (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id    uuid NOT NULL DEFAULT tenancy.current_tenant(),
    customer_id  uuid NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('link', 'record')),
    description  text NOT NULL CHECK (length(description) BETWEEN 1 AND 500),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status       text NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'paid', 'failed', 'cancelled', 'refunded')),
    reference    text CHECK (length(reference) <= 200),
    paid_at      timestamptz,
    archived_at  timestamptz,
    version      integer NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, id),
    FOREIGN KEY (tenant_id, customer_id) REFERENCES customers.customers (tenant_id, id)
);
CREATE INDEX payments_description_trgm ON payments.payments USING gin (description gin_trgm_ops);
CREATE INDEX payments_page ON payments.payments (tenant_id, created_at, id);
CREATE INDEX ON payments.payments (tenant_id, customer_id);
CREATE TRIGGER touch BEFORE UPDATE ON payments.payments FOR EACH ROW EXECUTE FUNCTION tenancy.touch();

-- Status changes that make sense; anything else is refused by the database
-- too, whatever a handler does.
CREATE FUNCTION payments.check_transition() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT (
           (OLD.status = 'pending' AND NEW.status IN ('paid', 'failed', 'cancelled'))
        OR (OLD.status = 'failed'  AND NEW.status IN ('pending', 'cancelled'))
        OR (OLD.status = 'paid'    AND NEW.status = 'refunded')
    ) THEN
        RAISE EXCEPTION 'payment status cannot change from % to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation', CONSTRAINT = 'payments_status_transition';
    END IF;
    IF NEW.status = 'paid' AND OLD.status <> 'paid' THEN
        NEW.paid_at := coalesce(NEW.paid_at, now());
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER status_transition BEFORE UPDATE ON payments.payments
    FOR EACH ROW EXECUTE FUNCTION payments.check_transition();

-- ─── audit ──────────────────────────────────────────────────────────────────
CREATE TABLE audit.events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    actor_id   uuid,
    action     text NOT NULL CHECK (action IN ('create', 'update', 'delete')),
    entity     text NOT NULL,
    entity_id  uuid NOT NULL,
    before     jsonb,
    after      jsonb,
    request_id text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON audit.events (tenant_id, id);
ALTER TABLE audit.events ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit.events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit.events USING (tenant_id = tenancy.current_tenant());
-- Read-only for the API: inserts come only from the trigger below.
GRANT SELECT ON audit.events TO pagodirecto_app;

-- One audit row per written row: who (app.user_id), what, when, before/after
-- (never the password hash), and the request it came from.
CREATE FUNCTION audit.record() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    old_row jsonb := CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) - 'password_hash' END;
    new_row jsonb := CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) - 'password_hash' END;
BEGIN
    INSERT INTO audit.events (tenant_id, actor_id, action, entity, entity_id, before, after, request_id)
    VALUES (
        coalesce(new_row ->> 'tenant_id', old_row ->> 'tenant_id')::uuid,
        tenancy.current_user_id(),
        CASE TG_OP WHEN 'INSERT' THEN 'create' WHEN 'UPDATE' THEN 'update' ELSE 'delete' END,
        TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME,
        coalesce(new_row ->> 'id', old_row ->> 'id')::uuid,
        old_row,
        new_row,
        nullif(current_setting('app.request_id', true), '')
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER audit AFTER INSERT OR DELETE ON iam.users FOR EACH ROW EXECUTE FUNCTION audit.record();
-- Not for failed-login counters: those are bookkeeping, not changes to the user.
CREATE TRIGGER audit_update AFTER UPDATE OF email, name, role, password_hash, active ON iam.users
    FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON customers.customers FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON customers.contacts FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON sales.pipeline_stages FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON sales.deals FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON activities.activities FOR EACH ROW EXECUTE FUNCTION audit.record();
CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON payments.payments FOR EACH ROW EXECUTE FUNCTION audit.record();

-- ─── isolation and grants for every tenant-owned table ──────────────────────
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY[
        'iam.users', 'iam.refresh_tokens', 'customers.customers', 'customers.contacts',
        'sales.pipeline_stages', 'sales.deals', 'activities.activities', 'payments.payments'
    ] LOOP
        EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %s FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %s USING (tenant_id = tenancy.current_tenant()) '
            'WITH CHECK (tenant_id = tenancy.current_tenant())', t);
        -- No DELETE: rows are archived, and the audit log keeps their history.
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON %s TO pagodirecto_app', t);
    END LOOP;
END
$$;

-- ─── the doors through RLS the API needs before it knows the tenant ─────────
-- Each is SECURITY DEFINER (runs as the owner, who is not subject to RLS) and
-- does exactly one narrow thing.

-- Login: find a user by email, whatever the tenant.
CREATE FUNCTION iam.login_lookup(p_email text)
    RETURNS TABLE (id uuid, tenant_id uuid, role text, password_hash text, active boolean,
                   failed_logins integer, locked_until timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT u.id, u.tenant_id, u.role, u.password_hash, u.active, u.failed_logins, u.locked_until
        FROM iam.users u WHERE u.email = lower(p_email)
    $$;

-- Refresh: find a refresh token by its hash, whatever the tenant.
CREATE FUNCTION iam.refresh_lookup(p_hash bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, user_id uuid, family_id uuid, expires_at timestamptz,
                   used_at timestamptz, revoked_at timestamptz)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
        SELECT t.id, t.tenant_id, t.user_id, t.family_id, t.expires_at, t.used_at, t.revoked_at
        FROM iam.refresh_tokens t WHERE t.token_hash = p_hash
    $$;

-- Every request: scope this transaction to the caller's tenant and user, and
-- return the user's current role (NULL when deactivated or gone), so a role
-- change or deactivation applies at once, not when the token expires.
CREATE FUNCTION iam.begin_request(p_tenant uuid, p_user uuid, p_request_id text)
    RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    r text;
BEGIN
    PERFORM set_config('app.tenant_id', p_tenant::text, true);
    PERFORM set_config('app.user_id', coalesce(p_user::text, ''), true);
    PERFORM set_config('app.request_id', coalesce(p_request_id, ''), true);
    IF p_user IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT u.role INTO r FROM iam.users u WHERE u.id = p_user AND u.tenant_id = p_tenant AND u.active;
    RETURN r;
END
$$;

REVOKE ALL ON FUNCTION iam.login_lookup(text), iam.refresh_lookup(bytea), iam.begin_request(uuid, uuid, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION iam.login_lookup(text), iam.refresh_lookup(bytea), iam.begin_request(uuid, uuid, text) TO pagodirecto_app;
