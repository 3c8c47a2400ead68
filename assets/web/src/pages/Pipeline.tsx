// The deals pipeline: one column per stage, a card per deal, and a select on
// each card that moves it to another stage (PATCH stage_id with If-Match).
import { useState, type FormEvent } from 'react';
import { ApiError, etagOf, get, request, withQuery, type Customer, type Deal, type Page, type Stage } from '../api';
import { money, parseMoney } from '../format';
import { Link } from '../router';
import { ErrorMessage, Field, Notice, Select, useLoad, useTitle } from '../ui';

/** Deals shown per column; the rest is counted, not hidden silently. */
const PER_STAGE = 100;

interface Board {
  stages: Stage[];
  deals: Map<string, Page<Deal>>;
}

async function loadBoard(): Promise<Board> {
  const stages = (await get<Page<Stage>>('/api/v1/pipeline-stages')).items;
  const pages = await Promise.all(stages.map((s) => get<Page<Deal>>(withQuery('/api/v1/deals', { stage_id: s.id, limit: PER_STAGE }))));
  return { stages, deals: new Map(stages.map((s, i) => [s.id, pages[i] ?? { items: [] }])) };
}

export function Pipeline() {
  useTitle('Pipeline');
  const board = useLoad(loadBoard, []);
  const [error, setError] = useState<unknown>(null);
  const [moved, setMoved] = useState('');
  const [creating, setCreating] = useState(false);

  const move = async (deal: Deal, stage: Stage) => {
    setError(null);
    setMoved('');
    try {
      await request<Deal>('PATCH', `/api/v1/deals/${deal.id}`, { body: { stage_id: stage.id }, ifMatch: etagOf(deal.version) });
      setMoved(`Moved “${deal.title}” to ${stage.name}.`);
    } catch (err) {
      setError(err);
    }
    board.reload();
  };

  const stages = board.data?.stages ?? [];
  return (
    <section aria-labelledby="pipeline-title">
      <div className="heading">
        <h1 id="pipeline-title">Pipeline</h1>
        {!creating && stages.length > 0 && (
          <button type="button" onClick={() => setCreating(true)}>
            New deal
          </button>
        )}
      </div>
      {creating && (
        <NewDeal
          stages={stages}
          onDone={() => {
            setCreating(false);
            board.reload();
          }}
        />
      )}
      {moved && <Notice>{moved}</Notice>}
      <ErrorMessage error={error ?? board.error} />
      {board.loading && !board.data && <p aria-live="polite">Loading…</p>}
      {board.data && stages.length === 0 && <Notice>This pipeline has no stages.</Notice>}
      <div className="board">
        {stages.map((stage) => {
          const page = board.data?.deals.get(stage.id);
          const deals = page?.items ?? [];
          const total = deals.reduce<Map<string, number>>((sum, d) => sum.set(d.currency, (sum.get(d.currency) ?? 0) + d.amount_minor), new Map());
          return (
            <section key={stage.id} className={`column ${stage.kind}`} aria-labelledby={`stage-${stage.id}`} data-stage={stage.name}>
              <h2 id={`stage-${stage.id}`}>
                {stage.name} <span className="count">{deals.length}</span>
              </h2>
              <p className="muted total">{[...total].map(([currency, sum]) => money(sum, currency)).join(' + ') || 'Nothing here'}</p>
              <ul>
                {deals.map((deal) => (
                  <li key={deal.id} className="deal" data-deal={deal.title}>
                    <strong>{deal.title}</strong>
                    <span className="amount">{money(deal.amount_minor, deal.currency)}</span>
                    <Link href={`/customers/${deal.customer_id}`} aria-label={`Customer of “${deal.title}”`}>
                      Customer
                    </Link>
                    <label className="move">
                      <span className="sr-only">Move “{deal.title}” to stage</span>
                      <select
                        value={deal.stage_id}
                        onChange={(e) => {
                          const target = stages.find((s) => s.id === e.target.value);
                          if (target) void move(deal, target);
                        }}
                      >
                        {stages.map((s) => (
                          <option key={s.id} value={s.id}>
                            {s.name}
                          </option>
                        ))}
                      </select>
                    </label>
                  </li>
                ))}
              </ul>
              {page?.next_cursor && <p className="muted">More deals in this stage than shown here.</p>}
            </section>
          );
        })}
      </div>
    </section>
  );
}

function NewDeal({ stages, onDone }: { stages: Stage[]; onDone: () => void }) {
  const customers = useLoad(() => get<Page<Customer>>(withQuery('/api/v1/customers', { limit: 200 })), []);
  const [customerId, setCustomerId] = useState('');
  const [stageId, setStageId] = useState(stages[0]?.id ?? '');
  const [title, setTitle] = useState('');
  const [amount, setAmount] = useState('');
  const [currency, setCurrency] = useState('EUR');
  const [error, setError] = useState<unknown>(null);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    const code = currency.trim().toUpperCase();
    const minor = parseMoney(amount, code);
    if (minor === null) {
      setError(new ApiError(422, { type: '', title: '', status: 422, detail: 'The amount must be a number like 1250.00.', field: 'amount' }, ''));
      return;
    }
    try {
      await request('POST', '/api/v1/deals', { body: { customer_id: customerId, stage_id: stageId, title: title.trim(), amount_minor: minor, currency: code } });
      onDone();
    } catch (err) {
      setError(err);
    }
  };

  return (
    <form className="card form" onSubmit={(e) => void submit(e)} aria-label="New deal">
      <h2>New deal</h2>
      <div className="grid">
        <Select label="Customer" required value={customerId} onChange={(e) => setCustomerId(e.target.value)}>
          <option value="">{customers.loading ? 'Loading…' : 'Choose a customer'}</option>
          {customers.data?.items.map((c) => (
            <option key={c.id} value={c.id}>
              {c.name}
            </option>
          ))}
        </Select>
        <Select label="Stage" value={stageId} onChange={(e) => setStageId(e.target.value)}>
          {stages.map((s) => (
            <option key={s.id} value={s.id}>
              {s.name}
            </option>
          ))}
        </Select>
        <Field label="Title" required value={title} onChange={(e) => setTitle(e.target.value)} />
        <Field label="Amount" inputMode="decimal" required value={amount} onChange={(e) => setAmount(e.target.value)} />
        <Field label="Currency" required maxLength={3} pattern="[A-Za-z]{3}" hint="ISO 4217, like EUR" value={currency} onChange={(e) => setCurrency(e.target.value)} />
      </div>
      <ErrorMessage error={error ?? customers.error} />
      <div className="actions">
        <button type="submit">Create deal</button>
        <button type="button" className="secondary" onClick={onDone}>
          Cancel
        </button>
      </div>
    </form>
  );
}
