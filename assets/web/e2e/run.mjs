// Browser tests: the real daemon, Debian's Chromium driven by playwright-core.
//
//   node e2e/run.mjs --bin PATH/TO/pagodirecto [--screenshots DIR]
//
// Starts `pagodirecto run` on a temp data dir (port 0), logs in with the
// first owner's password, and walks what a person does: create and edit a
// customer, move a deal between stages, open Users and System, back up, lose
// the access token (the app refreshes), log out. Every request the browser
// makes is recorded and must go to the daemon's origin; a console error (a
// CSP violation is one) fails the run. The daemon gets SIGTERM at the end.
//
// `tests/it/browser.rs` runs this as part of `cargo test`. It fails, never
// skips, when Chromium or node_modules are missing.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, openSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opts } = parseArgs({
  options: {
    bin: { type: 'string' },
    screenshots: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM ?? '/usr/bin/chromium' },
    keep: { type: 'boolean', default: false },
  },
});

const TOTAL_TIMEOUT_MS = 300_000;
const STEP_TIMEOUT_MS = 30_000;

function die(message) {
  console.error(`e2e: ${message}`);
  process.exit(1);
}

if (!opts.bin) die('usage: node e2e/run.mjs --bin PATH/TO/pagodirecto [--screenshots DIR]');
if (!existsSync(opts.bin)) die(`no daemon binary at ${opts.bin}: build it first (cargo build)`);
if (!existsSync(opts.chromium)) {
  die(`no Chromium at ${opts.chromium}: install Debian's package (apt-get install chromium); .ci/run does`);
}
let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (err) {
  die(`playwright-core is not installed (${err.message}): run 'npm ci' in assets/web; .ci/run does`);
}

const results = [];
let daemon;
let dataDir;
let context;
let profileDir;
let failed = false;

const watchdog = setTimeout(() => {
  console.error(`e2e: gave up after ${TOTAL_TIMEOUT_MS / 1000} s`);
  failed = true;
  void cleanup().finally(() => process.exit(1));
}, TOTAL_TIMEOUT_MS);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function step(name, body) {
  const started = Date.now();
  try {
    await body();
    results.push({ name, ok: true });
    console.log(`ok   ${name} (${Date.now() - started} ms)`);
  } catch (err) {
    results.push({ name, ok: false });
    console.log(`FAIL ${name}: ${err.stack ?? err}`);
    throw err;
  }
}

// The daemon

async function startDaemon() {
  dataDir = mkdtempSync('/tmp/pd-e2e-');
  const log = openSync(join(dataDir, 'daemon.log'), 'a');
  daemon = spawn(opts.bin, ['run', '--data-dir', dataDir, '--listen', '127.0.0.1:0'], {
    env: { ...process.env, PAGODIRECTO_BACKUP__SCHEDULE: '' },
    stdio: ['ignore', log, log],
  });
  let exited = null;
  daemon.on('exit', (code, signal) => {
    exited = { code, signal };
  });
  const addrFile = join(dataDir, 'run', 'http.addr');
  const deadline = Date.now() + 120_000;
  while (Date.now() < deadline) {
    if (exited) throw new Error(`the daemon exited before it was ready: ${JSON.stringify(exited)}`);
    if (existsSync(addrFile)) {
      const base = `http://${readFileSync(addrFile, 'utf8').trim()}`;
      try {
        const res = await fetch(`${base}/ready`);
        if (res.ok) return base;
      } catch {
        // not listening yet
      }
    }
    await sleep(200);
  }
  throw new Error('the daemon was not ready after 120 s');
}

function ownerPassword() {
  const text = readFileSync(join(dataDir, 'secrets', 'initial-owner.txt'), 'utf8');
  const match = /log in as (\S+) with password (\S+)/.exec(text);
  check(match, `unexpected initial-owner.txt: ${text}`);
  return { email: match[1], password: match[2] };
}

async function stopDaemon() {
  if (!daemon || daemon.exitCode !== null || daemon.signalCode !== null) return;
  const done = new Promise((r) => daemon.once('exit', r));
  daemon.kill('SIGTERM');
  const stopped = await Promise.race([done.then(() => true), sleep(30_000).then(() => false)]);
  if (!stopped) {
    console.error('e2e: the daemon ignored SIGTERM for 30 s; killing it');
    daemon.kill('SIGKILL');
    await done;
  }
}

async function cleanup() {
  clearTimeout(watchdog);
  if (context) await context.close().catch(() => undefined);
  await stopDaemon();
  if (failed && dataDir) {
    try {
      const log = readFileSync(join(dataDir, 'daemon.log'), 'utf8').split('\n');
      console.error(`--- last lines of ${join(dataDir, 'daemon.log')} ---\n${log.slice(-40).join('\n')}`);
    } catch {
      // no log
    }
  }
  if (profileDir) rmSync(profileDir, { recursive: true, force: true });
  if (dataDir && !failed && !opts.keep) rmSync(dataDir, { recursive: true, force: true });
}

// The API, for setting the scene and checking what the UI did

async function api(base, token, method, path, body, headers = {}) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: {
      ...(token ? { authorization: `Bearer ${token}` } : {}),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null };
}

// The run

async function main() {
  let base;
  await step('start the daemon', async () => {
    base = await startDaemon();
  });
  const owner = ownerPassword();
  const origin = new URL(base).origin;

  // A customer and a deal through the API, so the board has something to move.
  let token;
  let deal;
  let stages;
  await step('seed a customer and a deal through the API', async () => {
    const login = await api(base, null, 'POST', '/api/v1/auth/login', owner);
    check(login.status === 200, `login: ${login.status}`);
    token = login.body.access_token;
    const customer = await api(base, token, 'POST', '/api/v1/customers', { name: 'Seeded Board Co' });
    check(customer.status === 201, `create customer: ${customer.status} ${JSON.stringify(customer.body)}`);
    stages = (await api(base, token, 'GET', '/api/v1/pipeline-stages')).body.items;
    check(stages.length >= 2, `need two stages, have ${stages.length}`);
    const created = await api(base, token, 'POST', '/api/v1/deals', {
      customer_id: customer.body.id,
      stage_id: stages[0].id,
      title: 'Board move deal',
      amount_minor: 1234500,
      currency: 'EUR',
    });
    check(created.status === 201, `create deal: ${created.status} ${JSON.stringify(created.body)}`);
    deal = created.body;
  });

  profileDir = mkdtempSync(join(tmpdir(), 'pd-e2e-chromium-'));
  context = await chromium.launchPersistentContext(profileDir, {
    executablePath: opts.chromium,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
    viewport: { width: 1280, height: 800 },
    timeout: 60_000,
  });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);

  const requests = [];
  const problems = [];
  const failures = [];
  context.on('request', (req) => requests.push(req.url()));
  context.on('response', (res) => {
    if (res.status() >= 400) failures.push(`${res.status()} ${new URL(res.url()).pathname}`);
  });
  const page = context.pages()[0] ?? (await context.newPage());
  page.on('console', (msg) => {
    if (msg.type() === 'error') problems.push(`console: ${msg.text()}`);
  });
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));

  const shot = async (name) => {
    if (!opts.screenshots) return;
    mkdirSync(opts.screenshots, { recursive: true });
    await page.screenshot({ path: join(resolve(opts.screenshots), `${name}.png`), fullPage: true });
  };
  const heading = (name) => page.getByRole('heading', { level: 1, name });

  await step('an unauthenticated visit lands on the login page', async () => {
    await page.goto(`${base}/customers`);
    await page.getByLabel('Email').waitFor();
    check(new URL(page.url()).pathname === '/login', `at ${page.url()}`);
    await shot('01-login');
  });

  await step('a wrong password is refused with a message', async () => {
    await page.getByLabel('Email').fill(owner.email);
    await page.getByLabel('Password').fill('not the password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').filter({ hasText: /invalid email or password/i }).waitFor();
  });

  await step('log in as the first owner', async () => {
    await page.getByLabel('Password').fill(owner.password);
    await page.getByRole('button', { name: 'Log in' }).click();
    await heading('Customers').waitFor();
    check(new URL(page.url()).pathname === '/customers', `back where we came from, not ${page.url()}`);
  });

  const name = `Acme Andina ${Date.now()}`;
  await step('create a customer', async () => {
    await page.getByRole('button', { name: 'New customer' }).click();
    const form = page.getByRole('form', { name: 'New customer' });
    await form.getByLabel('Name').fill(name);
    await form.getByLabel('Email').fill('compras@acme.example');
    await form.getByLabel('Company').fill('Acme S.A.');
    await form.getByRole('button', { name: 'Create customer' }).click();
    await heading(name).waitFor();
    check(/^\/customers\/[0-9a-f-]{36}$/.test(new URL(page.url()).pathname), `detail page, not ${page.url()}`);
    await shot('02-customer-created');
  });

  await step('edit the customer (If-Match)', async () => {
    await page.getByRole('button', { name: 'Edit' }).click();
    const form = page.getByRole('form', { name: 'Edit customer' });
    await form.getByLabel('Phone').fill('+51 1 555 0100');
    await form.getByLabel('Company').fill('Acme Andina S.A.C.');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.getByRole('status').filter({ hasText: 'Changes saved.' }).waitFor();
    await page.getByText('Acme Andina S.A.C.').waitFor();
    const id = new URL(page.url()).pathname.split('/')[2];
    const stored = await api(base, token, 'GET', `/api/v1/customers/${id}`);
    check(stored.body.phone === '+51 1 555 0100' && stored.body.version === 2, `stored: ${JSON.stringify(stored.body)}`);
  });

  await step('a stale edit is refused (412), shown, and succeeds on the latest version', async () => {
    const id = new URL(page.url()).pathname.split('/')[2];
    await page.getByRole('button', { name: 'Edit' }).click();
    const form = page.getByRole('form', { name: 'Edit customer' });
    // Someone else saves first.
    const current = await api(base, token, 'GET', `/api/v1/customers/${id}`);
    const other = await api(base, token, 'PATCH', `/api/v1/customers/${id}`, { notes: 'changed elsewhere' }, { 'if-match': `"${current.body.version}"` });
    check(other.status === 200, `the concurrent edit: ${other.status}`);
    await form.getByLabel('Phone').fill('+51 1 555 0199');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.getByRole('alert').filter({ hasText: 'Someone else changed this' }).waitFor();
    // The form re-opened with the other edit in it; making the change again
    // on top of it works.
    await page.waitForFunction(
      () => document.querySelector('form[aria-label="Edit customer"] textarea')?.value === 'changed elsewhere',
      undefined,
      { timeout: STEP_TIMEOUT_MS },
    );
    const again = page.getByRole('form', { name: 'Edit customer' });
    await again.getByLabel('Phone').fill('+51 1 555 0199');
    await again.getByRole('button', { name: 'Save changes' }).click();
    await page.getByRole('status').filter({ hasText: 'Changes saved.' }).waitFor();
    const stored = await api(base, token, 'GET', `/api/v1/customers/${id}`);
    check(
      stored.body.notes === 'changed elsewhere' && stored.body.phone === '+51 1 555 0199' && stored.body.version > other.body.version,
      `stored: ${JSON.stringify(stored.body)}`,
    );
  });

  await step('add a contact and log an activity on the customer', async () => {
    await page.getByRole('button', { name: 'Add contact' }).click();
    const contact = page.getByRole('form', { name: 'New contact' });
    await contact.getByLabel('Contact name').fill('Rosa Quispe');
    await contact.getByLabel('Job title').fill('Compras');
    await contact.getByRole('button', { name: 'Add' }).click();
    await page.getByText('Rosa Quispe').waitFor();
    const activity = page.getByRole('form', { name: 'Log an activity' });
    await activity.getByLabel('Subject').fill('Called about the renewal');
    await activity.getByRole('button', { name: 'Log activity' }).click();
    await page.getByText('Called about the renewal').waitFor();
    await shot('03-customer-detail');
  });

  await step('find the customer by search', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Customers' }).click();
    await heading('Customers').waitFor();
    await page.getByLabel('Search customers').fill('andina');
    await page.getByRole('button', { name: 'Search' }).click();
    await page.getByText('1 shown').waitFor();
    await page.getByRole('link', { name }).waitFor();
    check((await page.getByRole('row').count()) === 2, 'one header row and one match');
  });

  await step('move a deal between stages on the pipeline board', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Pipeline' }).click();
    await heading('Pipeline').waitFor();
    const [from, to] = stages;
    const card = (stage) => page.locator(`section[data-stage="${stage.name}"] li[data-deal="Board move deal"]`);
    await card(from).waitFor();
    await shot('04-pipeline-before');
    await page.getByLabel('Move “Board move deal” to stage').selectOption({ label: to.name });
    await page.getByRole('status').filter({ hasText: `Moved “Board move deal” to ${to.name}` }).waitFor();
    await card(to).waitFor();
    check((await card(from).count()) === 0, 'the deal left its old column');
    const stored = await api(base, token, 'GET', `/api/v1/deals/${deal.id}`);
    check(stored.body.stage_id === to.id, `stored stage ${stored.body.stage_id}, expected ${to.id}`);
    await shot('05-pipeline-after');
  });

  await step('Users: create a user and change a role (or an honest "not available")', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Users' }).click();
    await heading('Users').waitFor();
    const absent = page.getByText('User management is not available on this server yet');
    await page.getByRole('cell', { name: owner.email }).or(absent).first().waitFor();
    if (await absent.isVisible()) {
      console.log('     this server has no users API: the page says so');
      await shot('06-users');
      return;
    }
    await page.getByRole('button', { name: 'New user' }).click();
    const form = page.getByRole('form', { name: 'New user' });
    await form.getByLabel('Email').fill('agente@pagodirecto.local');
    await form.getByLabel('Name').fill('Agente Uno');
    await form.getByLabel('Role').selectOption('agent');
    await form.getByRole('button', { name: 'Create user' }).click();
    const notice = page.getByRole('status').filter({ hasText: 'Created agente@pagodirecto.local' });
    await notice.waitFor();
    const password = await notice.locator('code').textContent();
    check(password && password.length >= 12, `a one-time password is shown: ${password}`);
    await page.getByLabel('Role of Agente Uno').selectOption('viewer');
    let role;
    for (let i = 0; i < 50 && role !== 'viewer'; i += 1) {
      const users = await api(base, token, 'GET', '/api/v1/users?limit=200');
      role = users.body.items.find((u) => u.email === 'agente@pagodirecto.local')?.role;
      if (role !== 'viewer') await sleep(100);
    }
    check(role === 'viewer', `stored role: ${role}`);
    const login = await api(base, null, 'POST', '/api/v1/auth/login', { email: 'agente@pagodirecto.local', password });
    check(login.status === 200, `the new user logs in with the shown password: ${login.status}`);
    await shot('06-users');
  });

  await step('open the System page: readiness, uptime and restarts, resource charts, back up now', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'System' }).click();
    await heading('System').waitFor();
    await page.getByText('Ready', { exact: true }).waitFor();
    await page.getByRole('rowheader', { name: 'postgres' }).waitFor();
    await page.getByText('none since the server started').waitFor();
    // Charts of the sampler's measurements against the configured limits
    // (the first sample is taken as the server starts).
    const memory = page.getByRole('img', { name: /^Memory, last \d+ minutes\. Now: PostgreSQL [\d.]+ MiB/ });
    await memory.waitFor();
    check(/PostgreSQL budget [\d.]+ [KMG]iB/.test(await memory.getAttribute('aria-label')), 'the memory chart shows the budget');
    await page.getByRole('img', { name: /^CPU, last/ }).waitFor();
    await page.getByRole('img', { name: /^Disk free, last/ }).waitFor();
    await page.getByText('No backups yet.').waitFor();
    await page.getByRole('button', { name: 'Back up now' }).click();
    await page.getByRole('table', { name: 'Backups, newest first' }).getByRole('row').nth(1).waitFor({ timeout: 90_000 });
    await shot('07-system');
  });

  await step('an expired access token is refreshed without the user noticing', async () => {
    const before = await page.evaluate(() => JSON.parse(sessionStorage.getItem('pagodirecto.session')));
    await page.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem('pagodirecto.session'));
      sessionStorage.setItem('pagodirecto.session', JSON.stringify({ ...s, access: 'expired.token.here' }));
    });
    await page.reload();
    await heading('System').waitFor();
    // The backups list needs a valid token (the readiness checks do not).
    await page.getByRole('table', { name: 'Backups, newest first' }).getByRole('row').nth(1).waitFor();
    const after = await page.evaluate(() => JSON.parse(sessionStorage.getItem('pagodirecto.session')));
    check(after.refresh !== before.refresh, 'the refresh token rotated');
    check(after.access !== 'expired.token.here', 'a new access token is in use');
    // The old refresh token worked once and is spent now.
    const reuse = await api(base, null, 'POST', '/api/v1/auth/refresh', { refresh_token: before.refresh });
    check(reuse.status === 401, `a spent refresh token: ${reuse.status}`);
  });

  await step('a session that cannot be refreshed goes to the login page', async () => {
    const saved = await page.evaluate(() => sessionStorage.getItem('pagodirecto.session'));
    await page.evaluate(() => sessionStorage.setItem('pagodirecto.session', JSON.stringify({ access: 'bad', refresh: 'bad' })));
    await page.goto(`${base}/pipeline`);
    await page.getByText('Your session expired. Log in again to continue.').waitFor();
    check(new URL(page.url()).pathname === '/login', `at ${page.url()}`);
    await page.evaluate((s) => sessionStorage.setItem('pagodirecto.session', s), saved);
    await page.goto(`${base}/customers`);
    await heading('Customers').waitFor();
  });

  await step('usable on a phone: no sideways scrolling', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    for (const path of ['/customers', '/pipeline', '/system']) {
      await page.goto(`${base}${path}`);
      await page.getByRole('heading', { level: 1 }).first().waitFor();
      await page.waitForLoadState('networkidle');
      const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
      check(overflow <= 0, `${path} is ${overflow}px wider than the phone`);
      await shot(`08-phone${path.replace('/', '-')}`);
    }
    await page.setViewportSize({ width: 1280, height: 800 });
  });

  await step('archive a customer', async () => {
    await page.goto(`${base}/customers`);
    await page.getByRole('link', { name: 'Seeded Board Co' }).click();
    await heading('Seeded Board Co').waitFor();
    await page.getByRole('button', { name: 'Archive' }).click();
    await page.getByRole('button', { name: 'Confirm archive' }).click();
    await page.getByRole('status').filter({ hasText: 'Customer archived.' }).waitFor();
    await page.getByRole('heading', { level: 1, name: /Archived/ }).waitFor();
    await page.getByRole('link', { name: 'Customers', exact: true }).first().click();
    await heading('Customers').waitFor();
    await page.getByRole('link', { name }).waitFor();
    check((await page.getByRole('link', { name: 'Seeded Board Co' }).count()) === 0, 'archived customers leave the list');
    await page.getByLabel('Show archived').check();
    await page.getByRole('link', { name: 'Seeded Board Co' }).waitFor();
  });

  await step('log out', async () => {
    const session = await page.evaluate(() => JSON.parse(sessionStorage.getItem('pagodirecto.session')));
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.getByText('You are logged out.').waitFor();
    check(new URL(page.url()).pathname === '/login', `at ${page.url()}`);
    check((await page.evaluate(() => sessionStorage.getItem('pagodirecto.session'))) === null, 'the session is gone');
    await sleep(300); // the logout request is best effort; give it its moment
    const reuse = await api(base, null, 'POST', '/api/v1/auth/refresh', { refresh_token: session.refresh });
    check(reuse.status === 401, `the logged-out refresh token still works: ${reuse.status}`);
  });

  await step('every request went to the daemon, none to another origin', async () => {
    const foreign = requests.filter((url) => !url.startsWith('data:') && new URL(url).origin !== origin);
    check(requests.length > 20, `only ${requests.length} requests recorded`);
    check(foreign.length === 0, `requests to other origins:\n${foreign.join('\n')}`);
    console.log(`     ${requests.length} requests, all to ${origin}`);
  });

  await step('no console errors (a CSP violation would be one), no unexpected error responses', async () => {
    // Chrome logs every 4xx response as a console error; those are checked
    // by URL below instead. Anything else (CSP, a script error) fails.
    const unexpected = problems.filter((p) => !/Failed to load resource: the server responded with a status of 4(01|04|12)/.test(p));
    check(unexpected.length === 0, unexpected.join('\n'));
    // Expected: the wrong password and the deliberately broken tokens (401),
    // the stale edit (one 412), and /api/v1/users on a server without the
    // users API (404).
    const stale = failures.filter((f) => /^412 \/api\/v1\/customers\/[0-9a-f-]{36}$/.test(f));
    check(stale.length === 1, `one stale write, not ${stale.length}`);
    const odd = failures.filter((f) => !/^401 \/api\/v1\//.test(f) && f !== '404 /api/v1/users' && !stale.includes(f));
    check(odd.length === 0, `unexpected error responses:\n${odd.join('\n')}`);
  });

  await context.close();
  context = undefined;
  await step('the daemon stops on SIGTERM', async () => {
    await stopDaemon();
    check(daemon.exitCode === 0, `exit code ${daemon.exitCode}, signal ${daemon.signalCode}`);
  });
}

try {
  await main();
} catch {
  failed = true;
}
await cleanup();
const passed = results.filter((r) => r.ok).length;
console.log(`${passed} passed, ${results.length - passed} failed`);
process.exit(failed ? 1 : 0);
