// One customer: its fields (edit with If-Match, archive), and its contacts,
// deals, activities and payments.
import { useState, type FormEvent } from 'react';
import { ApiError, get, request, withQuery, type Activity, type Contact, type Customer, type Deal, type Page, type Payment, type Stage } from '../api';
import { dateTime, money } from '../format';
import { Link } from '../router';
import { ErrorMessage, Field, Notice, Select, TextArea, useLoad, useTitle } from '../ui';
import { CustomerForm } from './CustomerForm';

interface Loaded {
  customer: Customer;
  etag: string | null;
}

export function CustomerDetail({ id }: { id: string }) {
  const loaded = useLoad(async (): Promise<Loaded> => {
    const { data, etag } = await request<Customer>('GET', `/api/v1/customers/${encodeURIComponent(id)}`);
    return { customer: data, etag };
  }, [id]);
  const [editing, setEditing] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const [saved, setSaved] = useState('');
  const customer = loaded.data?.customer;
  useTitle(customer?.name ?? 'Customer');

  if (loaded.error && !customer) {
    const missing = loaded.error instanceof ApiError && (loaded.error.status === 404 || loaded.error.status === 422);
    return (
      <section>
        <h1>{missing ? 'Customer not found' : 'Customer'}</h1>
        <ErrorMessage error={loaded.error} />
        <p>
          <Link href="/customers">Back to customers</Link>
        </p>
      </section>
    );
  }
  if (!customer) return <p aria-live="polite">Loading…</p>;

  const archive = async () => {
    setError(null);
    try {
      const { data, etag } = await request<Customer>('POST', `/api/v1/customers/${customer.id}/archive`, { ifMatch: loaded.data?.etag });
      loaded.setData({ customer: data, etag });
      setSaved('Customer archived.');
    } catch (err) {
      setError(err);
      if (err instanceof ApiError && err.status === 412) loaded.reload();
    }
    setConfirming(false);
  };

  return (
    <section aria-labelledby="customer-title">
      <p className="crumbs">
        <Link href="/customers">Customers</Link> ›
      </p>
      <div className="heading">
        <h1 id="customer-title">
          {customer.name} {customer.archived_at && <span className="badge">Archived</span>}
        </h1>
        {!editing && !customer.archived_at && (
          <div className="actions">
            <button type="button" onClick={() => { setEditing(true); setSaved(''); setError(null); }}>
              Edit
            </button>
            {confirming ? (
              <>
                <button type="button" className="danger" onClick={() => void archive()}>
                  Confirm archive
                </button>
                <button type="button" className="secondary" onClick={() => setConfirming(false)}>
                  Keep
                </button>
              </>
            ) : (
              <button type="button" className="secondary" onClick={() => setConfirming(true)}>
                Archive
              </button>
            )}
          </div>
        )}
      </div>
      {saved && <Notice>{saved}</Notice>}
      <ErrorMessage error={error} />
      {editing ? (
        <CustomerForm
          key={customer.version}
          initial={customer}
          title="Edit customer"
          submitLabel="Save changes"
          onCancel={() => setEditing(false)}
          onSubmit={async (fields) => {
            try {
              const { data, etag } = await request<Customer>('PATCH', `/api/v1/customers/${customer.id}`, { body: fields, ifMatch: loaded.data?.etag });
              loaded.setData({ customer: data, etag });
              setEditing(false);
              setError(null);
              setSaved('Changes saved.');
            } catch (err) {
              if (!(err instanceof ApiError && err.status === 412)) throw err;
              // Stale: the form re-opens with the latest version (its key is
              // the version), and the message says why.
              setError(err);
              loaded.reload();
            }
          }}
        />
      ) : (
        <dl className="facts card">
          <dt>Company</dt>
          <dd>{customer.company ?? '—'}</dd>
          <dt>Email</dt>
          <dd>{customer.email ? <a href={`mailto:${customer.email}`}>{customer.email}</a> : '—'}</dd>
          <dt>Phone</dt>
          <dd>{customer.phone ?? '—'}</dd>
          <dt>Notes</dt>
          <dd className="pre">{customer.notes ?? '—'}</dd>
          <dt>Updated</dt>
          <dd>{dateTime(customer.updated_at)}</dd>
        </dl>
      )}
      <div className="panels">
        <Contacts customerId={customer.id} />
        <Deals customerId={customer.id} />
        <Activities customerId={customer.id} />
        <Payments customerId={customer.id} />
      </div>
    </section>
  );
}

function Contacts({ customerId }: { customerId: string }) {
  const list = useLoad(() => get<Page<Contact>>(withQuery('/api/v1/contacts', { customer_id: customerId, limit: 100 })), [customerId]);
  const [adding, setAdding] = useState(false);
  const [name, setName] = useState('');
  const [email, setEmail] = useState('');
  const [phone, setPhone] = useState('');
  const [title, setTitle] = useState('');
  const [error, setError] = useState<unknown>(null);

  const add = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    const orNull = (t: string) => (t.trim() ? t.trim() : null);
    try {
      await request('POST', '/api/v1/contacts', { body: { customer_id: customerId, name: name.trim(), email: orNull(email), phone: orNull(phone), title: orNull(title) } });
      setName('');
      setEmail('');
      setPhone('');
      setTitle('');
      setAdding(false);
      list.reload();
    } catch (err) {
      setError(err);
    }
  };

  return (
    <section className="panel card" aria-labelledby="contacts-title">
      <div className="heading">
        <h2 id="contacts-title">Contacts</h2>
        {!adding && (
          <button type="button" className="secondary" onClick={() => setAdding(true)}>
            Add contact
          </button>
        )}
      </div>
      {adding && (
        <form className="form" onSubmit={(e) => void add(e)} aria-label="New contact">
          <div className="grid">
            <Field label="Contact name" required value={name} onChange={(e) => setName(e.target.value)} />
            <Field label="Job title" value={title} onChange={(e) => setTitle(e.target.value)} />
            <Field label="Contact email" type="email" value={email} onChange={(e) => setEmail(e.target.value)} />
            <Field label="Contact phone" type="tel" value={phone} onChange={(e) => setPhone(e.target.value)} />
          </div>
          <ErrorMessage error={error} />
          <div className="actions">
            <button type="submit">Add</button>
            <button type="button" className="secondary" onClick={() => setAdding(false)}>
              Cancel
            </button>
          </div>
        </form>
      )}
      <ErrorMessage error={list.error} />
      {list.data && list.data.items.length === 0 && <p className="muted">No contacts.</p>}
      <ul className="rows">
        {list.data?.items.map((c) => (
          <li key={c.id}>
            <strong>{c.name}</strong>
            {c.title && <span className="muted"> · {c.title}</span>}
            <br />
            <span className="muted">{[c.email, c.phone].filter(Boolean).join(' · ') || 'no email or phone'}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

function Deals({ customerId }: { customerId: string }) {
  const list = useLoad(
    () =>
      Promise.all([
        get<Page<Deal>>(withQuery('/api/v1/deals', { customer_id: customerId, limit: 100 })),
        get<Page<Stage>>('/api/v1/pipeline-stages'),
      ]),
    [customerId],
  );
  const stageName = (id: string) => list.data?.[1].items.find((s) => s.id === id)?.name ?? '—';
  return (
    <section className="panel card" aria-labelledby="deals-title">
      <div className="heading">
        <h2 id="deals-title">Deals</h2>
        <Link href="/pipeline">Pipeline</Link>
      </div>
      <ErrorMessage error={list.error} />
      {list.data && list.data[0].items.length === 0 && <p className="muted">No deals.</p>}
      <ul className="rows">
        {list.data?.[0].items.map((d) => (
          <li key={d.id}>
            <strong>{d.title}</strong> <span className="amount">{money(d.amount_minor, d.currency)}</span>
            <br />
            <span className="muted">{stageName(d.stage_id)}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}

function Activities({ customerId }: { customerId: string }) {
  const list = useLoad(() => get<Page<Activity>>(withQuery('/api/v1/activities', { customer_id: customerId, limit: 50 })), [customerId]);
  const [kind, setKind] = useState<Activity['kind']>('note');
  const [subject, setSubject] = useState('');
  const [body, setBody] = useState('');
  const [error, setError] = useState<unknown>(null);

  const add = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    try {
      await request('POST', '/api/v1/activities', {
        body: { customer_id: customerId, kind, subject: subject.trim(), body: body.trim() || null, done: kind !== 'task' },
      });
      setSubject('');
      setBody('');
      list.reload();
    } catch (err) {
      setError(err);
    }
  };

  return (
    <section className="panel card" aria-labelledby="activities-title">
      <h2 id="activities-title">Activities</h2>
      <form className="form" onSubmit={(e) => void add(e)} aria-label="Log an activity">
        <div className="grid">
          <Select label="Kind" value={kind} onChange={(e) => setKind(e.target.value as Activity['kind'])}>
            <option value="note">Note</option>
            <option value="call">Call</option>
            <option value="task">Task</option>
          </Select>
          <Field label="Subject" required value={subject} onChange={(e) => setSubject(e.target.value)} />
        </div>
        <TextArea label="Details" value={body} onChange={(e) => setBody(e.target.value)} />
        <ErrorMessage error={error} />
        <div className="actions">
          <button type="submit" className="secondary">
            Log activity
          </button>
        </div>
      </form>
      <ErrorMessage error={list.error} />
      {list.data && list.data.items.length === 0 && <p className="muted">No activities.</p>}
      <ul className="rows">
        {list.data?.items.map((a) => (
          <li key={a.id}>
            <span className={`tag ${a.kind}`}>{a.kind}</span> <strong>{a.subject}</strong>
            {a.kind === 'task' && <span className="muted">{a.done ? ' · done' : ' · open'}</span>}
            <br />
            <span className="muted">{dateTime(a.created_at)}</span>
            {a.body && <p className="pre">{a.body}</p>}
          </li>
        ))}
      </ul>
    </section>
  );
}

function Payments({ customerId }: { customerId: string }) {
  const list = useLoad(() => get<Page<Payment>>(withQuery('/api/v1/payments', { customer_id: customerId, limit: 50 })), [customerId]);
  return (
    <section className="panel card" aria-labelledby="payments-title">
      <h2 id="payments-title">Payments</h2>
      <ErrorMessage error={list.error} />
      {list.data && list.data.items.length === 0 && <p className="muted">No payments.</p>}
      <ul className="rows">
        {list.data?.items.map((p) => (
          <li key={p.id}>
            <strong>{p.description}</strong> <span className="amount">{money(p.amount_minor, p.currency)}</span>
            <br />
            <span className={`status ${p.status}`}>{p.status}</span>
            <span className="muted"> · {dateTime(p.paid_at ?? p.created_at)}</span>
          </li>
        ))}
      </ul>
    </section>
  );
}
