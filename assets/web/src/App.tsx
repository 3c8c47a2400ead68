// The app's frame: the login page without a session, otherwise the header,
// the navigation and the page the path names.
import { useEffect, useSyncExternalStore } from 'react';
import { currentSession, get, logout, onSessionChange, type Me } from './api';
import { Link, navigate, usePath } from './router';
import { ErrorMessage, useLoad } from './ui';
import { Login } from './pages/Login';
import { Customers } from './pages/Customers';
import { CustomerDetail } from './pages/CustomerDetail';
import { Pipeline } from './pages/Pipeline';
import { Users } from './pages/Users';
import { System } from './pages/System';

export function App() {
  const session = useSyncExternalStore(onSessionChange, currentSession);
  const path = usePath();
  const onLogin = path.startsWith('/login');

  useEffect(() => {
    if (!session && !onLogin) {
      const here = window.location.pathname + window.location.search;
      navigate(here === '/' ? '/login' : `/login?next=${encodeURIComponent(here)}`, true);
    } else if (session && onLogin) {
      const next = new URLSearchParams(window.location.search).get('next');
      // Only our own paths: never an open redirect to another origin.
      navigate(next && next.startsWith('/') && !next.startsWith('//') ? next : '/customers', true);
    }
  }, [session, onLogin]);

  if (!session || onLogin) return <Login />;
  return <Shell path={window.location.pathname} />;
}

const isAdmin = (me: Me | undefined) => me?.role === 'admin' || me?.role === 'owner';

function Shell({ path }: { path: string }) {
  const me = useLoad(() => get<Me>('/api/v1/auth/me'), []);
  const section = path.split('/')[1] || 'customers';
  const links: [string, string][] = [
    ['/customers', 'Customers'],
    ['/pipeline', 'Pipeline'],
  ];
  if (isAdmin(me.data)) links.push(['/users', 'Users'], ['/system', 'System']);

  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="top">
        <div className="brand">
          <span className="logo" aria-hidden="true">
            P
          </span>
          <span>
            PagoDirecto
            {me.data && <small className="tenant">{me.data.tenant_name}</small>}
          </span>
        </div>
        <nav aria-label="Main">
          <ul>
            {links.map(([href, label]) => (
              <li key={href}>
                <Link href={href} aria-current={href.slice(1) === section ? 'page' : undefined}>
                  {label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <div className="who">
          {me.data && (
            <span className="me" title={me.data.email}>
              {me.data.name} <small>({me.data.role})</small>
            </span>
          )}
          <button type="button" className="secondary" onClick={() => void logout()}>
            Log out
          </button>
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <ErrorMessage error={me.error} />
        <Page path={path} admin={isAdmin(me.data)} />
      </main>
    </>
  );
}

function Page({ path, admin }: { path: string; admin: boolean }) {
  const parts = path.split('/').filter(Boolean);
  const [first = 'customers', second] = parts;
  if (first === 'customers' && second) return <CustomerDetail id={decodeURIComponent(second)} key={second} />;
  if (first === 'customers' && parts.length === 1) return <Customers />;
  if (parts.length === 0) return <Customers />;
  if (first === 'pipeline' && parts.length === 1) return <Pipeline />;
  if (first === 'users' && parts.length === 1) return <Users admin={admin} />;
  if (first === 'system' && parts.length === 1) return <System />;
  return (
    <section>
      <h1>Page not found</h1>
      <p>
        There is nothing at <code>{path}</code>. <Link href="/customers">Go to customers</Link>.
      </p>
    </section>
  );
}
