// The appliance itself, for admins: readiness of each part, uptime and
// restarts, resource usage against the configured limits over the last hour,
// and the backups with "Back up now".
import { useEffect, useState } from 'react';
import { ApiError, get, request, type Backups, type Readiness, type Resources, type Status } from '../api';
import { LineChart } from '../chart';
import { bytes, dateTime, duration, percent } from '../format';
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
  const status = useLoad(() => get<Status>('/api/v1/system/status'), []);
  const resources = useLoad(() => get<Resources>('/api/v1/system/resources'), []);

  // The sampler measures every 5 s: follow it while the page is open.
  useEffect(() => {
    const timer = window.setInterval(() => {
      status.reload();
      resources.reload();
    }, 10000);
    return () => window.clearInterval(timer);
  }, [status.reload, resources.reload]);
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

      <section className="card" aria-labelledby="processes-title">
        <div className="heading">
          <h2 id="processes-title">Processes</h2>
        </div>
        <ErrorMessage error={status.error} />
        {status.data && (
          <dl className="facts">
            <dt>Server</dt>
            <dd>
              PagoDirecto {status.data.version}, up {duration(status.data.uptime_secs)} (pid {status.data.pid})
            </dd>
            <dt>PostgreSQL</dt>
            <dd className={status.data.postgres.state === 'ready' ? 'ok' : 'bad'}>
              {status.data.postgres.version}: {status.data.postgres.state} for {duration(status.data.postgres.state_since_secs)}
            </dd>
            <dt>Restarts</dt>
            <dd>
              {status.data.postgres.restarts === 0
                ? 'none since the server started'
                : `${status.data.postgres.restarts}; last exit: ${status.data.postgres.last_exit ?? 'unknown'}`}
            </dd>
            <dt>Configuration</dt>
            <dd>
              loaded {dateTime(status.data.config_loaded_at)}
              {status.data.restart_pending.length > 0 && `; restart needed for ${status.data.restart_pending.join(', ')}`}
              {status.data.config_error && `; last edit refused: ${status.data.config_error}`}
            </dd>
          </dl>
        )}
      </section>

      <section className="card" aria-labelledby="resources-title">
        <h2 id="resources-title">Resource usage, last hour</h2>
        <ErrorMessage error={resources.error} />
        {resources.data && resources.data.samples.length === 0 && (
          <p className="muted">The first sample is taken a few seconds after the server starts.</p>
        )}
        {resources.data && resources.data.samples.length > 0 && <ResourceCharts resources={resources.data} />}
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

function ResourceCharts({ resources }: { resources: Resources }) {
  const { samples } = resources;
  const times = samples.map((s) => s.at);
  return (
    <div className="charts">
      <LineChart
        title="Memory"
        times={times}
        format={bytes}
        series={[
          { label: 'PostgreSQL', className: 'series-1', values: samples.map((s) => s.postgres_rss_bytes) },
          { label: 'Server', className: 'series-2', values: samples.map((s) => s.daemon_rss_bytes) },
        ]}
        limit={{ label: 'PostgreSQL budget', value: resources.postgres_memory_bytes }}
      />
      <LineChart
        title="CPU"
        times={times}
        format={percent}
        series={[
          { label: 'PostgreSQL', className: 'series-1', values: samples.map((s) => s.postgres_cpu_percent) },
          { label: 'Server', className: 'series-2', values: samples.map((s) => s.daemon_cpu_percent) },
        ]}
      />
      <LineChart
        title="Disk free"
        times={times}
        format={bytes}
        series={[
          { label: 'Data', className: 'series-1', values: samples.map((s) => s.data_free_bytes) },
          { label: 'Backups', className: 'series-2', values: samples.map((s) => s.backup_free_bytes) },
        ]}
        limit={{ label: 'Reserve', value: resources.disk_reserve_bytes }}
      />
    </div>
  );
}
