// Users of this tenant, for admins: list, invite (create), change role and
// deactivate. The users API may be missing from an older server: then the
// page says so instead of pretending.
import { useState, type FormEvent } from 'react';
import { ApiError, etagOf, get, request, withQuery, type Page, type Role, type User } from '../api';
import { ErrorMessage, Field, Notice, Select, useLoad, useTitle } from '../ui';

const ROLES: Role[] = ['viewer', 'agent', 'admin', 'owner'];

export function Users({ admin }: { admin: boolean }) {
  useTitle('Users');
  const list = useLoad(() => get<Page<User>>(withQuery('/api/v1/users', { limit: 200 })), []);
  const [error, setError] = useState<unknown>(null);
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState<{ email: string; password?: string } | null>(null);

  const status = list.error instanceof ApiError ? list.error.status : null;
  if (status === 404 || status === 405) {
    return (
      <section aria-labelledby="users-title">
        <h1 id="users-title">Users</h1>
        <Notice>
          User management is not available on this server yet: it has no users API. Until it does, add users on the server with{' '}
          <code>pagodirecto user add</code>.
        </Notice>
      </section>
    );
  }
  if (status === 403 || (!admin && !list.data)) {
    return (
      <section aria-labelledby="users-title">
        <h1 id="users-title">Users</h1>
        {list.loading ? <p aria-live="polite">Loading…</p> : <Notice>Managing users needs the admin or owner role.</Notice>}
      </section>
    );
  }

  const update = async (user: User, change: Partial<Pick<User, 'role' | 'active' | 'name'>>) => {
    setError(null);
    try {
      await request<User>('PATCH', `/api/v1/users/${user.id}`, { body: change, ifMatch: etagOf(user.version) });
    } catch (err) {
      setError(err);
    }
    list.reload();
  };

  return (
    <section aria-labelledby="users-title">
      <div className="heading">
        <h1 id="users-title">Users</h1>
        {!creating && (
          <button type="button" onClick={() => { setCreating(true); setCreated(null); }}>
            New user
          </button>
        )}
      </div>
      {creating && (
        <NewUser
          onCancel={() => setCreating(false)}
          onCreated={(email, password) => {
            setCreating(false);
            setCreated({ email, password });
            list.reload();
          }}
        />
      )}
      {created && (
        <div className="notice" role="status">
          Created {created.email}.
          {created.password && (
            <>
              {' '}
              Their one-time password is <code className="secret">{created.password}</code> — hand it over now; it is not shown again.
            </>
          )}
        </div>
      )}
      <ErrorMessage error={error ?? list.error} />
      {list.data && (
        <table className="list">
          <caption className="sr-only">Users</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Email</th>
              <th scope="col">Role</th>
              <th scope="col">Status</th>
            </tr>
          </thead>
          <tbody>
            {list.data.items.map((u) => (
              <tr key={u.id} className={u.active ? '' : 'inactive'}>
                <th scope="row" data-label="Name">
                  {u.name}
                </th>
                <td data-label="Email">{u.email}</td>
                <td data-label="Role">
                  <label className="sr-only" htmlFor={`role-${u.id}`}>
                    Role of {u.name}
                  </label>
                  <select id={`role-${u.id}`} value={u.role} onChange={(e) => void update(u, { role: e.target.value as Role })}>
                    {ROLES.map((r) => (
                      <option key={r} value={r}>
                        {r}
                      </option>
                    ))}
                  </select>
                </td>
                <td data-label="Status">
                  {u.active ? 'Active' : 'Deactivated'}{' '}
                  <button type="button" className="secondary small" onClick={() => void update(u, { active: !u.active })}>
                    {u.active ? 'Deactivate' : 'Activate'}
                    <span className="sr-only"> {u.name}</span>
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function NewUser({ onCancel, onCreated }: { onCancel: () => void; onCreated: (email: string, password?: string) => void }) {
  const [email, setEmail] = useState('');
  const [name, setName] = useState('');
  const [role, setRole] = useState<Role>('agent');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    try {
      const { data } = await request<User & { initial_password?: string }>('POST', '/api/v1/users', {
        body: { email: email.trim(), name: name.trim(), role, password: password || undefined },
      });
      onCreated(data.email, data.initial_password);
    } catch (err) {
      setError(err);
    }
  };

  return (
    <form className="card form" onSubmit={(e) => void submit(e)} aria-label="New user">
      <h2>New user</h2>
      <div className="grid">
        <Field label="Email" type="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
        <Field label="Name" required value={name} onChange={(e) => setName(e.target.value)} />
        <Select label="Role" value={role} onChange={(e) => setRole(e.target.value as Role)}>
          {ROLES.map((r) => (
            <option key={r} value={r}>
              {r}
            </option>
          ))}
        </Select>
        <Field
          label="Password"
          type="password"
          autoComplete="new-password"
          minLength={12}
          hint="At least 12 characters; leave empty to get a one-time password"
          value={password}
          onChange={(e) => setPassword(e.target.value)}
        />
      </div>
      <ErrorMessage error={error} />
      <div className="actions">
        <button type="submit">Create user</button>
        <button type="button" className="secondary" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}
