-- The demo data of ONE tenant, set-based. Runs as the superuser inside the
-- tenant's transaction, after app.tenant_id is set (so every tenant_id
-- column takes its default), demo_profile is filled and setseed() was called
-- (so a tenant's data is the same on every machine, apart from uuids and now()).
--
-- The superuser bypasses Row-Level Security, so every read of a real table
-- here filters on tenancy.current_tenant() itself.

CREATE OR REPLACE FUNCTION pg_temp.pick(anyarray) RETURNS anyelement
    LANGUAGE sql VOLATILE
    AS 'SELECT $1[1 + floor(random() * array_length($1, 1))::int]';

-- "Café del Valle" → "cafedelvalle": good enough for an email address.
CREATE OR REPLACE FUNCTION pg_temp.slug(text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $f$SELECT regexp_replace(translate(lower($1), 'áéíóúüñç', 'aeiouunc'), '[^a-z0-9]+', '', 'g')$f$;

CREATE TEMP TABLE demo_country (
    code     text PRIMARY KEY,
    currency text NOT NULL,
    exponent int NOT NULL,      -- ISO 4217 minor unit digits
    per_usd  numeric NOT NULL,  -- a rough rate, for plausible amounts
    phone    text NOT NULL,
    cities   text[] NOT NULL,
    suffixes text[] NOT NULL,
    tld      text NOT NULL
) ON COMMIT DROP;
INSERT INTO demo_country VALUES
    ('MX', 'MXN', 2, 17,   '+52 55',  ARRAY['Ciudad de México', 'Guadalajara', 'Monterrey', 'Puebla', 'Querétaro', 'Mérida'],
                                     ARRAY['S.A. de C.V.', 'S. de R.L. de C.V.', 'SAPI de C.V.'], 'com.mx'),
    ('CO', 'COP', 2, 4000, '+57 601', ARRAY['Bogotá', 'Medellín', 'Cali', 'Barranquilla', 'Bucaramanga'],
                                     ARRAY['S.A.S.', 'Ltda.', 'S.A.'], 'com.co'),
    ('PE', 'PEN', 2, 3.7,  '+51 1',   ARRAY['Lima', 'Arequipa', 'Trujillo', 'Cusco', 'Piura'],
                                     ARRAY['S.A.C.', 'E.I.R.L.', 'S.A.'], 'com.pe'),
    ('CL', 'CLP', 0, 900,  '+56 2',   ARRAY['Santiago', 'Valparaíso', 'Concepción', 'Antofagasta', 'La Serena'],
                                     ARRAY['SpA', 'Ltda.', 'S.A.'], 'cl'),
    ('US', 'USD', 2, 1,    '+1 305',  ARRAY['Miami', 'Houston', 'San Diego', 'New York', 'Austin'],
                                     ARRAY['Inc.', 'LLC', 'Corp.'], 'com');

CREATE TEMP TABLE demo_customer (
    n          int PRIMARY KEY,
    id         uuid NOT NULL,
    name       text NOT NULL,
    country    text NOT NULL,
    company    text,
    domain     text NOT NULL,
    contacts   int NOT NULL,
    created_at timestamptz NOT NULL
) ON COMMIT DROP;

CREATE TEMP TABLE demo_deal (
    n           int PRIMARY KEY,
    id          uuid NOT NULL,
    customer_id uuid NOT NULL,
    title       text NOT NULL,
    kind        text NOT NULL,
    amount      bigint NOT NULL,
    currency    text NOT NULL,
    created_at  timestamptz NOT NULL
) ON COMMIT DROP;

-- ─── customers: a person, mostly at a company, in one of the tenant's countries
WITH base AS MATERIALIZED (
    SELECT n, pg_temp.pick(p.countries) AS country, random() AS r,
           now() - random() * interval '730 days' AS created_at
    FROM generate_series(1, 2000) n, demo_profile p
), person AS MATERIALIZED (
    SELECT b.n, gen_random_uuid() AS id, b.country, b.created_at, c.phone, c.tld, c.suffixes,
           CASE WHEN b.country = 'US' OR random() < 0.08
                THEN pg_temp.pick(ARRAY['James', 'Emily', 'Michael', 'Sarah', 'David', 'Jessica', 'Robert',
                                        'Olivia', 'William', 'Emma', 'Daniel', 'Grace', 'Thomas', 'Hannah'])
                ELSE pg_temp.pick(ARRAY['María', 'José', 'Juan', 'Carlos', 'Ana', 'Luis', 'Sofía', 'Valentina',
                                        'Diego', 'Camila', 'Andrés', 'Gabriela', 'Fernando', 'Lucía', 'Javier',
                                        'Paula', 'Ricardo', 'Daniela', 'Alejandro', 'Isabel', 'Mateo', 'Martina',
                                        'Sebastián', 'Renata', 'Jorge', 'Ximena', 'Rodrigo', 'Florencia'])
           END AS first_name,
           CASE WHEN b.country = 'US' AND random() < 0.7
                THEN pg_temp.pick(ARRAY['Smith', 'Johnson', 'Brown', 'Miller', 'Wilson', 'Taylor', 'Anderson',
                                        'Clark', 'Walker', 'Young'])
                ELSE pg_temp.pick(ARRAY['García', 'Rodríguez', 'Martínez', 'López', 'González', 'Hernández',
                                        'Pérez', 'Sánchez', 'Ramírez', 'Torres', 'Flores', 'Rivera', 'Gómez',
                                        'Díaz', 'Vargas', 'Castillo', 'Rojas', 'Morales', 'Ortiz', 'Silva',
                                        'Quispe', 'Mamani', 'Restrepo', 'Valenzuela', 'Salazar', 'Navarro'])
           END AS last_name,
           CASE WHEN b.r < 0.85 THEN
               CASE WHEN b.country = 'US'
                    THEN pg_temp.pick(ARRAY['Blue Harbor', 'Summit', 'Northwind', 'Brightline', 'Redwood',
                                            'Silverline', 'Pioneer', 'Lakeside'])
                         || ' ' || pg_temp.pick(ARRAY['Trading', 'Analytics', 'Foods', 'Media', 'Logistics',
                                                      'Health', 'Supply', 'Labs'])
                    ELSE pg_temp.pick(ARRAY['Grupo', 'Comercial', 'Distribuidora', 'Inversiones', 'Industrias',
                                            'Servicios', 'Constructora', 'Agrícola', 'Transportes', 'Laboratorios',
                                            'Consultores', 'Importadora', 'Café', 'Textiles', 'Farmacias'])
                         || ' ' || pg_temp.pick(ARRAY['Andino', 'del Pacífico', 'Cóndor', 'Sol Naciente', 'Horizonte',
                                                      'Los Alpes', 'Santa Fe', 'El Roble', 'Altamar', 'Cordillera',
                                                      'Quetzal', 'La Estrella', 'Río Claro', 'Monte Verde',
                                                      'Valle Alto', 'Las Brisas', 'San Martín', 'Atlántico'])
               END
           END AS company_base,
           CASE WHEN random() < 0.25 THEN
               pg_temp.pick(ARRAY['Prefiere contacto por WhatsApp.', 'Pide factura electrónica a fin de mes.',
                                  'Interesado en pagos recurrentes con tarjeta.', 'Solicita cotizaciones en USD.',
                                  'Conocido en la feria Expo Pagos.', 'Referred by an existing customer.',
                                  'Decision maker is the CFO; send proposals to her.',
                                  'Paga siempre por transferencia, nunca con link.'])
           END AS notes,
           1 + floor(random() * 3)::int AS contacts
    FROM base b JOIN demo_country c ON c.code = b.country
), named AS MATERIALIZED (
    SELECT p.*,
           CASE WHEN p.company_base IS NOT NULL THEN p.company_base || ' ' || pg_temp.pick(p.suffixes) END AS company,
           CASE WHEN p.company_base IS NOT NULL THEN pg_temp.slug(p.company_base) || '.' || p.tld
                ELSE pg_temp.pick(ARRAY['gmail.com', 'hotmail.com', 'outlook.com', 'yahoo.com']) END AS domain
    FROM person p
), inserted AS (
    INSERT INTO customers.customers (id, name, email, phone, company, notes, archived_at, created_at, updated_at)
    SELECT id, first_name || ' ' || last_name,
           pg_temp.slug(first_name) || '.' || pg_temp.slug(last_name)
               || CASE WHEN n % 4 = 0 THEN (n % 89)::text ELSE '' END || '@' || domain,
           phone || ' ' || lpad(floor(random() * 10000)::int::text, 4, '0')
                 || ' ' || lpad(floor(random() * 10000)::int::text, 4, '0'),
           company, notes,
           CASE WHEN random() < 0.03 THEN created_at + random() * (now() - created_at) END,
           created_at, created_at + random() * (now() - created_at)
    FROM named
    RETURNING id
)
INSERT INTO demo_customer (n, id, name, country, company, domain, contacts, created_at)
SELECT n, id, first_name || ' ' || last_name, country, company, domain, contacts, created_at FROM named;

-- ─── contacts: one to three more people per customer
WITH c AS MATERIALIZED (
    SELECT dc.id AS customer_id, dc.country, dc.domain, dc.created_at, k,
           CASE WHEN dc.country = 'US'
                THEN pg_temp.pick(ARRAY['Laura', 'Kevin', 'Megan', 'Brian', 'Ashley', 'Jason', 'Rachel', 'Carlos'])
                ELSE pg_temp.pick(ARRAY['Patricia', 'Miguel', 'Carolina', 'Eduardo', 'Natalia', 'Héctor', 'Adriana',
                                        'Raúl', 'Mónica', 'Pablo', 'Verónica', 'Ignacio', 'Laura', 'Esteban'])
           END AS first_name,
           CASE WHEN dc.country = 'US'
                THEN pg_temp.pick(ARRAY['Evans', 'Moore', 'Thompson', 'Lee', 'Harris', 'Martin', 'Ramírez'])
                ELSE pg_temp.pick(ARRAY['Aguilar', 'Medina', 'Castro', 'Romero', 'Suárez', 'Herrera', 'Jiménez',
                                        'Ruiz', 'Álvarez', 'Mendoza', 'Chávez', 'Ríos', 'Fuentes'])
           END AS last_name
    FROM demo_customer dc, generate_series(1, dc.contacts) k
)
INSERT INTO customers.contacts (customer_id, name, email, phone, title, created_at, updated_at)
SELECT customer_id, first_name || ' ' || last_name,
       pg_temp.slug(first_name) || '.' || pg_temp.slug(last_name) || CASE WHEN k > 1 THEN k::text ELSE '' END
           || '@' || domain,
       CASE WHEN random() < 0.8 THEN (SELECT phone FROM demo_country WHERE code = c.country)
            || ' ' || lpad(floor(random() * 10000)::int::text, 4, '0')
            || ' ' || lpad(floor(random() * 10000)::int::text, 4, '0') END,
       CASE WHEN country = 'US'
            THEN pg_temp.pick(ARRAY['CFO', 'Head of Operations', 'Purchasing Manager', 'Accounts Payable', 'CEO'])
            ELSE pg_temp.pick(ARRAY['Gerente de Compras', 'Director Comercial', 'Contadora', 'Jefe de Tesorería',
                                    'Gerente General', 'Asistente de Facturación', 'Director de Finanzas']) END,
       t, t
FROM c, LATERAL (SELECT least(now(), c.created_at + random() * interval '60 days') AS t) ts;

-- ─── deals: across the pipeline, in the customer's currency (sometimes USD)
WITH d AS MATERIALIZED (
    SELECT g AS n,
           -- Skewed: some customers have several deals, many have none.
           1 + floor(2000 * random() ^ 1.6)::int AS cn,
           pg_temp.pick(ARRAY['Lead', 'Lead', 'Lead', 'Lead', 'Lead', 'Qualified', 'Qualified', 'Qualified',
                              'Qualified', 'Proposal', 'Proposal', 'Proposal', 'Negotiation', 'Negotiation',
                              'Won', 'Won', 'Won', 'Won', 'Lost', 'Lost']) AS stage,
           pg_temp.pick(ARRAY['Licencias anuales', 'Implementación', 'Renovación', 'Ampliación de usuarios',
                              'Pasarela de pagos', 'Integración ERP', 'Soporte premium', 'Cobranza recurrente',
                              'Annual subscription', 'Onboarding package']) AS what,
           -- Log-uniform from 300 to 150,000 US dollars' worth.
           300 * power(500, random()) AS usd,
           random() AS r
    FROM generate_series(1, 1500) g
), priced AS MATERIALIZED (
    SELECT d.n, gen_random_uuid() AS id, c.id AS customer_id, s.id AS stage_id, s.kind,
           d.what || ' — ' || coalesce(c.company, c.name) AS title,
           CASE WHEN d.r < 0.15 THEN 'USD' ELSE co.currency END AS currency,
           CASE WHEN d.r < 0.15 THEN 2 ELSE co.exponent END AS exponent,
           CASE WHEN d.r < 0.15 THEN 1 ELSE co.per_usd END AS per_usd,
           d.usd, c.created_at + random() * (now() - c.created_at) AS created_at
    FROM d
    JOIN demo_customer c ON c.n = d.cn
    JOIN demo_country co ON co.code = c.country
    JOIN sales.pipeline_stages s ON s.tenant_id = tenancy.current_tenant() AND s.name = d.stage
), amounts AS MATERIALIZED (
    -- Rounded to tens of the major unit, as people quote them.
    SELECT p.*, (round(p.usd * p.per_usd / 10) * 10 * power(10, p.exponent))::bigint AS amount FROM priced p
), inserted AS (
    INSERT INTO sales.deals (id, customer_id, stage_id, title, amount_minor, currency, expected_close,
                             archived_at, created_at, updated_at)
    SELECT id, customer_id, stage_id, title, amount, currency,
           (created_at + (15 + random() * 120) * interval '1 day')::date,
           CASE WHEN kind = 'lost' AND random() < 0.3 THEN created_at + random() * (now() - created_at) END,
           created_at, created_at + random() * (now() - created_at)
    FROM amounts
    RETURNING id
)
INSERT INTO demo_deal (n, id, customer_id, title, kind, amount, currency, created_at)
SELECT n, id, customer_id, title, kind, amount, currency, created_at FROM amounts;

-- ─── activities: notes, calls and tasks; two in five about a deal
WITH a AS MATERIALIZED (
    SELECT g, 1 + floor(random() * 1500)::int AS dn, 1 + floor(random() * 2000)::int AS cn,
           pg_temp.pick(ARRAY['note', 'note', 'note', 'note', 'call', 'call', 'call', 'task', 'task', 'task']) AS kind
    FROM generate_series(1, 3000) g
), b AS MATERIALIZED (
    SELECT a.kind,
           CASE WHEN a.g <= 1200 THEN d.id END AS deal_id,
           CASE WHEN a.g <= 1200 THEN d.customer_id ELSE c.id END AS customer_id,
           CASE WHEN a.g <= 1200 THEN d.created_at ELSE c.created_at END AS since
    FROM a JOIN demo_deal d ON d.n = a.dn JOIN demo_customer c ON c.n = a.cn
), t AS MATERIALIZED (
    SELECT b.*, b.since + random() * (now() - b.since) AS created_at FROM b
), due AS MATERIALIZED (
    SELECT t.*, CASE WHEN kind = 'task' THEN created_at + (1 + random() * 20) * interval '1 day' END AS due_at FROM t
)
INSERT INTO activities.activities (customer_id, deal_id, kind, subject, body, due_at, done, created_at, updated_at)
SELECT customer_id, deal_id, kind,
       CASE kind
           WHEN 'note' THEN pg_temp.pick(ARRAY['Notas de la reunión', 'Pidió descuento por volumen',
                                               'Cambio de contacto en compras', 'Comparando con otro proveedor',
                                               'Meeting notes', 'Requested a case study'])
           WHEN 'call' THEN pg_temp.pick(ARRAY['Llamada de seguimiento', 'Llamada de descubrimiento',
                                               'Revisión de propuesta por teléfono', 'Follow-up call',
                                               'Llamada por pago pendiente'])
           ELSE pg_temp.pick(ARRAY['Enviar propuesta', 'Preparar contrato', 'Agendar demo', 'Enviar factura',
                                   'Confirmar datos de facturación', 'Send pricing sheet'])
       END,
       CASE WHEN random() < 0.6 THEN
           pg_temp.pick(ARRAY['Quedamos en volver a hablar la próxima semana.',
                              'Necesitan aprobación del directorio antes de firmar.',
                              'El cliente quiere pagar en dos cuotas.',
                              'Se enviaron los precios actualizados por correo.',
                              'They asked for a quote in US dollars.',
                              'Sin respuesta; reintentar el jueves.'])
       END,
       due_at,
       CASE WHEN kind = 'task' THEN due_at < now() AND random() < 0.85 ELSE true END,
       created_at, created_at
FROM due;

-- ─── payments: installments of won deals, then links and records for anyone
WITH won AS MATERIALIZED (
    SELECT d.*, k, 1 + d.n % 3 AS parts
    FROM demo_deal d, generate_series(1, 1 + d.n % 3) k
    WHERE d.kind = 'won' AND d.amount > 0
), p AS MATERIALIZED (
    SELECT customer_id, currency, greatest(amount / parts, 1) AS amount,
           CASE WHEN parts = 1 THEN 'Pago total — ' ELSE 'Cuota ' || k || '/' || parts || ' — ' END || title AS description,
           created_at + (k * 20 + random() * 10) * interval '1 day' AS moment, random() AS r, random() < 0.6 AS link
    FROM won
)
INSERT INTO payments.payments (customer_id, kind, description, amount_minor, currency, status, reference,
                               paid_at, created_at, updated_at)
SELECT customer_id, CASE WHEN link THEN 'link' ELSE 'record' END, left(description, 500), amount, currency,
       s.status,
       CASE WHEN link THEN 'https://pay.pagodirecto.example/l/' || substr(md5(random()::text), 1, 12)
            ELSE CASE currency WHEN 'MXN' THEN 'SPEI ' WHEN 'COP' THEN 'PSE ' WHEN 'PEN' THEN 'Yape '
                               WHEN 'CLP' THEN 'Transferencia ' ELSE 'Wire ' END
                 || upper(substr(md5(random()::text), 1, 12)) END,
       CASE WHEN s.status IN ('paid', 'refunded') THEN least(moment, now()) END,
       least(moment, now()) - interval '3 days', least(moment, now())
FROM p, LATERAL (SELECT CASE
        WHEN moment > now() THEN 'pending'
        WHEN r < 0.80 THEN 'paid'
        WHEN r < 0.87 THEN 'failed'
        WHEN r < 0.94 THEN 'cancelled'
        ELSE 'refunded' END AS status) s;

WITH q AS MATERIALIZED (
    SELECT g, 1 + floor(2000 * random() ^ 1.3)::int AS cn, 30 * power(200, random()) AS usd, random() AS r,
           random() < 0.55 AS link
    FROM generate_series(1, greatest(0, 1500 - (SELECT count(*) FROM payments.payments
                                                 WHERE tenant_id = tenancy.current_tenant()))) g
), p AS MATERIALIZED (
    SELECT c.id AS customer_id, co.currency,
           greatest((round(q.usd * co.per_usd) * power(10, co.exponent))::bigint, 1) AS amount,
           pg_temp.pick(ARRAY['Factura F-', 'Boleta B-', 'Invoice INV-', 'Mensualidad M-']) || lpad(q.g::text, 6, '0') AS description,
           c.created_at + random() * (now() - c.created_at) AS moment, q.r, q.link
    FROM q JOIN demo_customer c ON c.n = q.cn JOIN demo_country co ON co.code = c.country
)
INSERT INTO payments.payments (customer_id, kind, description, amount_minor, currency, status, reference,
                               paid_at, created_at, updated_at)
SELECT customer_id, CASE WHEN link THEN 'link' ELSE 'record' END, description, amount, currency, s.status,
       CASE WHEN link THEN 'https://pay.pagodirecto.example/l/' || substr(md5(random()::text), 1, 12)
            ELSE CASE currency WHEN 'MXN' THEN 'SPEI ' WHEN 'COP' THEN 'PSE ' WHEN 'PEN' THEN 'Yape '
                               WHEN 'CLP' THEN 'Transferencia ' ELSE 'Wire ' END
                 || upper(substr(md5(random()::text), 1, 12)) END,
       CASE WHEN s.status IN ('paid', 'refunded') THEN moment + random() * least(now() - moment, interval '5 days') END,
       moment, moment
FROM p, LATERAL (SELECT CASE
        -- Links wait for the payer; records are money already seen.
        WHEN link AND moment > now() - interval '10 days' THEN 'pending'
        WHEN link AND r < 0.55 THEN 'paid'
        WHEN link AND r < 0.70 THEN 'failed'
        WHEN link AND r < 0.90 THEN 'cancelled'
        WHEN link THEN 'pending'
        WHEN r < 0.92 THEN 'paid'
        ELSE 'refunded' END AS status) s;
