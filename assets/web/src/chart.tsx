// A small line chart in SVG: the System page's resource usage over the last
// hour. No chart library (the app stays small and makes no other requests);
// the colours and lines come from styles.css, so the CSP needs no inline styles.

export interface Series {
  label: string;
  /** A class in styles.css: `series-1`, `series-2`, … */
  className: string;
  values: number[];
}

interface Props {
  title: string;
  /** Unix seconds of each point, oldest first (shared by every series). */
  times: number[];
  series: Series[];
  /** A horizontal line for the configured limit, if there is one. */
  limit?: { label: string; value: number };
  format: (value: number) => string;
}

const WIDTH = 600;
const HEIGHT = 160;
const PAD = { top: 10, right: 8, bottom: 20, left: 8 };

export function LineChart({ title, times, series, limit, format }: Props) {
  const all = series.flatMap((s) => s.values);
  const max = Math.max(1, ...all, limit?.value ?? 0) * 1.05;
  const first = times[0] ?? 0;
  const last = times[times.length - 1] ?? 1;
  const span = Math.max(1, last - first);
  const x = (t: number) => PAD.left + ((t - first) / span) * (WIDTH - PAD.left - PAD.right);
  const y = (v: number) => PAD.top + (1 - v / max) * (HEIGHT - PAD.top - PAD.bottom);
  const path = (values: number[]) =>
    values.map((v, i) => `${i === 0 ? 'M' : 'L'}${x(times[i] ?? first).toFixed(1)},${y(v).toFixed(1)}`).join(' ');
  const latest = series.map((s) => `${s.label} ${format(s.values[s.values.length - 1] ?? 0)}`);
  const summary = `${title}, last ${Math.round(span / 60)} minutes. Now: ${latest.join(', ')}${
    limit ? `; ${limit.label} ${format(limit.value)}` : ''
  }.`;
  return (
    <figure className="chart">
      <figcaption>
        <strong>{title}</strong>
        <span className="legend">
          {series.map((s) => (
            <span key={s.label} className={`key ${s.className}`}>
              {s.label}: {format(s.values[s.values.length - 1] ?? 0)}
            </span>
          ))}
          {limit && (
            <span className="key limit">
              {limit.label}: {format(limit.value)}
            </span>
          )}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${WIDTH} ${HEIGHT}`} role="img" aria-label={summary} preserveAspectRatio="none">
        <line className="axis" x1={PAD.left} x2={WIDTH - PAD.right} y1={y(0)} y2={y(0)} />
        {limit && <line className="limit" x1={PAD.left} x2={WIDTH - PAD.right} y1={y(limit.value)} y2={y(limit.value)} />}
        {times.length > 1 &&
          series.map((s) => <path key={s.label} className={`line ${s.className}`} d={path(s.values)} fill="none" />)}
        <text className="tick" x={PAD.left} y={HEIGHT - 4}>
          {new Date(first * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}
        </text>
        <text className="tick" x={WIDTH - PAD.right} y={HEIGHT - 4} textAnchor="end">
          {new Date(last * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}
        </text>
      </svg>
    </figure>
  );
}
