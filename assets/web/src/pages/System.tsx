// The appliance itself, for admins: readiness of each part, the backups with
// "Back up now", and an honest empty state where metrics will go.
import { useEffect, useState } from 'react';
import { ApiError, get, request, type Backups, type Readiness } from '../api';
import { bytes, dateTime } from '../format';
import { ErrorMessage, Notice, useLoad, useTitle } from '../ui';

/** /ready answers 503 with the same JSON when a check fails: both are data here. */
async function readiness(): Promise<Readiness> {
  const res = await fetch('/ready', { headers: { accept: 'application/json' } });
  if (res.status !== 200 && res.status !== 503) throw new ApiError(res.status, null, `readiness answered ${res.status}`);
  return (await res.json()) as Readiness;
}

export function System() {
  useTitle('System');
  const ready = useLoad(readiness, []);
  const backups = useLoad(() => get<Backups>('/api/v1/system/backups'), []);
  const [error, setError] = useState<unknown>(null);
  const [started, setStarted] = useState(false);
  const running = backups.data?.running ?? null;

  // While a backup runs (or was just asked for), look again every 2 s.
  useEffect(() => {
    if (!running && !started) return undefined;
    const timer = window.setInterval(() => backups.reload(), 2000);
    return () => window.clearInterval(timer);
  }, [running, started, backups.reload]);
  useEffect(() => {
    if (started && !running && backups.data) {
      const timer = window.setTimeout(() => setStarted(false), 2500);
      return () => window.clearTimeout(timer);
    }
    return undefined;
  }, [started, running, backups.data]);

  const backUpNow = async () => {
    setError(null);
    try {
      await request('POST', '/api/v1/system/backups', { body: {} });
      setStarted(true);
      backups.reload();
    } catch (err) {
      setError(err);
    }
  };

  const checks = Object.entries(ready.data?.checks ?? {});
  return (
    <section aria-labelledby="system-title">
      <h1 id="system-title">System</h1>

      <section className="card" aria-labelledby="health-title">
        <div className="heading">
          <h2 id="health-title">Health</h2>
          <button type="button" className="secondary" onClick={ready.reload}>
            Check again
          </button>
        </div>
        <ErrorMessage error={ready.error} />
        {ready.data && (
          <p className={ready.data.ready ? 'ok' : 'bad'}>
            <strong>{ready.data.ready ? 'Ready' : 'Not ready'}</strong>: {ready.data.ready ? 'every check passes.' : 'a check below fails.'}
          </p>
        )}
        {checks.length > 0 && (
          <table className="list">
            <caption className="sr-only">Readiness checks</caption>
            <thead>
              <tr>
                <th scope="col">Part</th>
                <th scope="col">State</th>
                <th scope="col">Detail</th>
              </tr>
            </thead>
            <tbody>
              {checks.map(([name, check]) => (
                <tr key={name}>
                  <th scope="row" data-label="Part">
                    {name}
                  </th>
                  <td data-label="State" className={check.ok ? 'ok' : 'bad'}>
                    {check.ok ? 'OK' : 'Failing'}
                  </td>
                  <td data-label="Detail">{String(check.detail ?? '')}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>

      <section className="card" aria-labelledby="resources-title">
        <h2 id="resources-title">Resource usage</h2>
        <div className="empty">
          <p>
            <strong>Resource usage appears once metrics are built.</strong>
          </p>
          <p className="muted">
            This server does not yet record CPU, memory, disk use, uptime or restarts over time, so there is nothing to chart. No numbers
            are shown rather than made-up ones.
          </p>
        </div>
      </section>

      <section className="card" aria-labelledby="backups-title">
        <div className="heading">
          <h2 id="backups-title">Backups</h2>
          <button type="button" onClick={() => void backUpNow()} disabled={Boolean(running) || started}>
            {running || started ? 'Backing up…' : 'Back up now'}
          </button>
        </div>
        <ErrorMessage error={error ?? backups.error} />
        <div aria-live="polite">
          {running && <Notice>Running: {running}</Notice>}
          {started && !running && <Notice>Backup finished.</Notice>}
        </div>
        {backups.data?.last_failure && (
          <p className="error" role="alert">
            Last failure: {backups.data.last_failure}
          </p>
        )}
        {backups.data && backups.data.items.length === 0 && <p className="muted">No backups yet.</p>}
        {backups.data && backups.data.items.length > 0 && (
          <table className="list">
            <caption className="sr-only">Backups, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Taken</th>
                <th scope="col">Size</th>
                <th scope="col">Encrypted</th>
                <th scope="col">Restore tested</th>
              </tr>
            </thead>
            <tbody>
              {[...backups.data.items]
                .sort((a, b) => b.created_at.localeCompare(a.created_at))
                .map((b) => (
                  <tr key={b.name}>
                    <th scope="row" data-label="Name" className="mono">
                      {b.name}
                    </th>
                    <td data-label="Taken">{dateTime(b.created_at)}</td>
                    <td data-label="Size">{bytes(b.size)}</td>
                    <td data-label="Encrypted">{b.encrypted ? 'Yes' : 'No'}</td>
                    <td data-label="Restore tested">{b.restore_verified_at ? dateTime(b.restore_verified_at) : 'Not yet'}</td>
                  </tr>
                ))}
            </tbody>
          </table>
        )}
      </section>
    </section>
  );
}
