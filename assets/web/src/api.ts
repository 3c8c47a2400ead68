// The one way the app talks to the daemon: same-origin fetches to /api/v1
// with a bearer token, and a transparent refresh when the token expired.
//
// Invariant: a 401 triggers at most one refresh (shared by every request
// that saw it: refresh tokens rotate and each works once), then one retry;
// if that fails too the session ends and the app shows the login page.

export interface Problem {
  type: string;
  title: string;
  status: number;
  detail: string;
  field?: string;
}

export class ApiError extends Error {
  readonly status: number;
  readonly problem: Problem | null;

  constructor(status: number, problem: Problem | null, fallback: string) {
    super(problem?.detail ?? fallback);
    this.status = status;
    this.problem = problem;
  }
}

export interface Page<T> {
  items: T[];
  next_cursor?: string | null;
}

export interface Session {
  access: string;
  refresh: string;
}

const STORAGE_KEY = 'pagodirecto.session';

// Per tab: sessionStorage survives a reload but not closing the tab.
function loadSession(): Session | null {
  try {
    const text = sessionStorage.getItem(STORAGE_KEY);
    return text ? (JSON.parse(text) as Session) : null;
  } catch {
    return null;
  }
}

let session: Session | null = loadSession();
let refreshing: Promise<boolean> | null = null;
let ended: 'expired' | 'logout' | null = null;
const listeners = new Set<() => void>();

function setSession(next: Session | null, why: 'expired' | 'logout' | null = null): void {
  session = next;
  ended = next ? null : why;
  if (next) sessionStorage.setItem(STORAGE_KEY, JSON.stringify(next));
  else sessionStorage.removeItem(STORAGE_KEY);
  for (const listener of listeners) listener();
}

export function currentSession(): Session | null {
  return session;
}

/** Why the last session ended: the login page says so. */
export function sessionEnded(): 'expired' | 'logout' | null {
  return ended;
}

export function onSessionChange(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

async function problemOf(res: Response): Promise<Problem | null> {
  const type = res.headers.get('content-type') ?? '';
  if (!type.includes('json')) return null;
  try {
    const body = (await res.json()) as Partial<Problem>;
    return typeof body.detail === 'string' ? (body as Problem) : null;
  } catch {
    return null;
  }
}

async function fail(res: Response): Promise<never> {
  throw new ApiError(res.status, await problemOf(res), `${res.status} ${res.statusText}`);
}

function postJson(path: string, body: unknown): Promise<Response> {
  return fetch(path, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
}

interface Tokens {
  access_token: string;
  refresh_token: string;
}

export async function login(email: string, password: string): Promise<void> {
  const res = await postJson('/api/v1/auth/login', { email, password });
  if (!res.ok) await fail(res);
  const tokens = (await res.json()) as Tokens;
  setSession({ access: tokens.access_token, refresh: tokens.refresh_token });
}

export async function logout(): Promise<void> {
  const ending = session;
  setSession(null, 'logout');
  if (ending) {
    // Best effort: the server forgets the refresh token; the short-lived
    // access token simply expires.
    await postJson('/api/v1/auth/logout', { refresh_token: ending.refresh }).catch(() => undefined);
  }
}

/** One refresh for everyone who saw the same expired token. */
function refresh(): Promise<boolean> {
  if (!refreshing) {
    const from = session;
    refreshing = (async () => {
      if (!from) return false;
      try {
        const res = await postJson('/api/v1/auth/refresh', { refresh_token: from.refresh });
        if (!res.ok) return false;
        const tokens = (await res.json()) as Tokens;
        setSession({ access: tokens.access_token, refresh: tokens.refresh_token });
        return true;
      } catch {
        return false;
      }
    })().finally(() => {
      refreshing = null;
    });
  }
  return refreshing;
}

export interface Sent<T> {
  data: T;
  etag: string | null;
  status: number;
}

export interface Options {
  body?: unknown;
  ifMatch?: string | null;
}

/** An authenticated request; refreshes the token once on 401. */
export async function request<T>(method: string, path: string, options: Options = {}): Promise<Sent<T>> {
  const send = (token: string | undefined) => {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    if (options.body !== undefined) headers['content-type'] = 'application/json';
    if (options.ifMatch) headers['if-match'] = options.ifMatch;
    return fetch(path, {
      method,
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
    });
  };
  const used = session?.access;
  let res = await send(used);
  if (res.status === 401 && session) {
    // Someone else may have refreshed while this request was in flight.
    const renewed = session.access !== used || (await refresh());
    if (renewed) res = await send(session?.access);
    if (res.status === 401) {
      setSession(null, 'expired');
      await fail(res);
    }
  }
  if (!res.ok) await fail(res);
  const text = res.status === 204 ? '' : await res.text();
  return {
    data: (text ? JSON.parse(text) : null) as T,
    etag: res.headers.get('etag'),
    status: res.status,
  };
}

export async function get<T>(path: string): Promise<T> {
  return (await request<T>('GET', path)).data;
}

/** `path` with the defined, non-empty values of `params` as its query. */
export function withQuery(path: string, params: Record<string, string | number | boolean | null | undefined>): string {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** The ETag for a row we read from a list (lists carry `version`, not headers). */
export function etagOf(version: number): string {
  return `"${version}"`;
}

/** A message for a person, from anything a request threw. */
export function messageOf(err: unknown): string {
  if (err instanceof ApiError) {
    if (err.status === 412) return 'Someone else changed this since you opened it. The latest version is shown; try again.';
    return err.message;
  }
  if (err instanceof TypeError) return 'The server cannot be reached. Check the connection and try again.';
  return err instanceof Error ? err.message : String(err);
}

// The API's resources, as the app uses them.

export type Role = 'viewer' | 'agent' | 'admin' | 'owner';

export interface Me {
  id: string;
  tenant_id: string;
  tenant_name: string;
  email: string;
  name: string;
  role: Role;
}

export interface Customer {
  id: string;
  name: string;
  email: string | null;
  phone: string | null;
  company: string | null;
  notes: string | null;
  archived_at: string | null;
  version: number;
  created_at: string;
  updated_at: string;
}

export interface Contact {
  id: string;
  customer_id: string;
  name: string;
  email: string | null;
  phone: string | null;
  title: string | null;
  archived_at: string | null;
  version: number;
  created_at: string;
}

export interface Stage {
  id: string;
  name: string;
  position: number;
  kind: 'open' | 'won' | 'lost';
}

export interface Deal {
  id: string;
  customer_id: string;
  stage_id: string;
  title: string;
  amount_minor: number;
  currency: string;
  expected_close: string | null;
  archived_at: string | null;
  version: number;
  created_at: string;
}

export interface Activity {
  id: string;
  customer_id: string;
  deal_id: string | null;
  kind: 'note' | 'call' | 'task';
  subject: string;
  body: string | null;
  due_at: string | null;
  done: boolean;
  version: number;
  created_at: string;
}

export interface Payment {
  id: string;
  customer_id: string;
  kind: 'link' | 'record';
  description: string;
  amount_minor: number;
  currency: string;
  status: 'pending' | 'paid' | 'failed' | 'cancelled' | 'refunded';
  reference: string | null;
  paid_at: string | null;
  version: number;
  created_at: string;
}

export interface User {
  id: string;
  email: string;
  name: string;
  role: Role;
  active: boolean;
  version: number;
  created_at: string;
}

export interface Backup {
  name: string;
  created_at: string;
  size: number;
  encrypted: boolean;
  schema_version: number;
  duration_ms: number;
  verified_at: string;
  restore_verified_at: string | null;
}

export interface Backups {
  items: Backup[];
  running: string | null;
  last_failure: string | null;
}

export interface Readiness {
  status: string;
  ready: boolean;
  checks: Record<string, { ok: boolean; detail: string }>;
}

/** One resource sample (every 5 s, the last hour kept). */
export interface Sample {
  at: number;
  daemon_rss_bytes: number;
  daemon_cpu_percent: number;
  postgres_rss_bytes: number;
  postgres_cpu_percent: number;
  postgres_processes: number;
  data_free_bytes: number;
  backup_free_bytes: number;
}

export interface Resources {
  samples: Sample[];
  postgres_memory_bytes: number;
  disk_reserve_bytes: number;
  max_connections: number;
}

/** The report `pagodirecto status --json` prints (the parts the page shows). */
export interface Status {
  version: string;
  pid: number;
  uptime_secs: number;
  ready: boolean;
  postgres: {
    state: string;
    pid: number | null;
    restarts: number;
    last_exit: string | null;
    state_since_secs: number;
    version: string;
  };
  config_loaded_at: string;
  restart_pending: string[];
  config_error: string | null;
}
