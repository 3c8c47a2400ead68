// The customer list: search, archived toggle, cursor paging ("Load more"),
// and the form that creates one.
import { useEffect, useState, type FormEvent } from 'react';
import { get, request, withQuery, type Customer, type Page } from '../api';
import { Link, navigate } from '../router';
import { ErrorMessage, Notice, useTitle } from '../ui';
import { CustomerForm } from './CustomerForm';

const PAGE_SIZE = 25;

export function Customers() {
  useTitle('Customers');
  const [query, setQuery] = useState('');
  const [search, setSearch] = useState('');
  const [archived, setArchived] = useState(false);
  const [items, setItems] = useState<Customer[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<unknown>(null);
  const [creating, setCreating] = useState(false);

  const fetchPage = (after: string | null) =>
    get<Page<Customer>>(withQuery('/api/v1/customers', { q: search, archived: archived || undefined, limit: PAGE_SIZE, cursor: after }));

  useEffect(() => {
    let current = true;
    setLoading(true);
    fetchPage(null).then(
      (page) => {
        if (!current) return;
        setItems(page.items);
        setCursor(page.next_cursor ?? null);
        setError(null);
        setLoading(false);
      },
      (err: unknown) => {
        if (!current) return;
        setError(err);
        setLoading(false);
      },
    );
    return () => {
      current = false;
    };
  }, [search, archived]);

  const more = async () => {
    if (!cursor) return;
    setLoading(true);
    try {
      const page = await fetchPage(cursor);
      setItems((old) => [...old, ...page.items]);
      setCursor(page.next_cursor ?? null);
    } catch (err) {
      setError(err);
    }
    setLoading(false);
  };

  const submitSearch = (event: FormEvent) => {
    event.preventDefault();
    setSearch(query.trim());
  };

  return (
    <section aria-labelledby="customers-title">
      <div className="heading">
        <h1 id="customers-title">Customers</h1>
        {!creating && (
          <button type="button" onClick={() => setCreating(true)}>
            New customer
          </button>
        )}
      </div>
      {creating && (
        <CustomerForm
          title="New customer"
          submitLabel="Create customer"
          onCancel={() => setCreating(false)}
          onSubmit={async (fields) => {
            const { data } = await request<Customer>('POST', '/api/v1/customers', { body: fields });
            navigate(`/customers/${data.id}`);
          }}
        />
      )}
      <form role="search" className="toolbar" onSubmit={submitSearch}>
        <label htmlFor="customer-search" className="sr-only">
          Search customers
        </label>
        <input id="customer-search" type="search" placeholder="Search name, email or company" value={query} onChange={(e) => setQuery(e.target.value)} />
        <button type="submit" className="secondary">
          Search
        </button>
        <label className="check">
          <input type="checkbox" checked={archived} onChange={(e) => setArchived(e.target.checked)} /> Show archived
        </label>
      </form>
      <ErrorMessage error={error} />
      {!loading && !error && items.length === 0 && (
        <Notice>{search ? `No customers match “${search}”.` : archived ? 'No archived customers.' : 'No customers yet. Create the first one.'}</Notice>
      )}
      {items.length > 0 && (
        <table className="list">
          <caption className="sr-only">{archived ? 'Archived customers' : 'Customers'}</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Company</th>
              <th scope="col">Email</th>
              <th scope="col">Phone</th>
            </tr>
          </thead>
          <tbody>
            {items.map((c) => (
              <tr key={c.id}>
                <th scope="row" data-label="Name">
                  <Link href={`/customers/${c.id}`}>{c.name}</Link>
                </th>
                <td data-label="Company">{c.company ?? '—'}</td>
                <td data-label="Email">{c.email ?? '—'}</td>
                <td data-label="Phone">{c.phone ?? '—'}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      <p className="pager" aria-live="polite">
        {loading ? 'Loading…' : `${items.length} shown`}
        {cursor && !loading && (
          <button type="button" className="secondary" onClick={() => void more()}>
            Load more
          </button>
        )}
      </p>
    </section>
  );
}
