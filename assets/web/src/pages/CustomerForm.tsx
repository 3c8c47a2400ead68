import { useState, type FormEvent } from 'react';
import type { Customer } from '../api';
import { ErrorMessage, Field, TextArea } from '../ui';

export interface CustomerFields {
  name: string;
  email: string | null;
  phone: string | null;
  company: string | null;
  notes: string | null;
}

/** Create or edit a customer; empty optional fields are sent as null (cleared). */
export function CustomerForm({
  initial,
  title,
  submitLabel,
  onSubmit,
  onCancel,
}: {
  initial?: Customer;
  title: string;
  submitLabel: string;
  onSubmit: (fields: CustomerFields) => Promise<void>;
  onCancel: () => void;
}) {
  const [name, setName] = useState(initial?.name ?? '');
  const [email, setEmail] = useState(initial?.email ?? '');
  const [phone, setPhone] = useState(initial?.phone ?? '');
  const [company, setCompany] = useState(initial?.company ?? '');
  const [notes, setNotes] = useState(initial?.notes ?? '');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const orNull = (text: string) => (text.trim() === '' ? null : text.trim());

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await onSubmit({ name: name.trim(), email: orNull(email), phone: orNull(phone), company: orNull(company), notes: orNull(notes) });
    } catch (err) {
      setError(err);
      setBusy(false);
    }
  };

  return (
    <form className="card form" onSubmit={(e) => void submit(e)} aria-label={title}>
      <h2>{title}</h2>
      <div className="grid">
        <Field label="Name" name="name" required maxLength={200} value={name} onChange={(e) => setName(e.target.value)} />
        <Field label="Company" name="company" value={company} onChange={(e) => setCompany(e.target.value)} />
        <Field label="Email" name="email" type="email" value={email} onChange={(e) => setEmail(e.target.value)} />
        <Field label="Phone" name="phone" type="tel" value={phone} onChange={(e) => setPhone(e.target.value)} />
      </div>
      <TextArea label="Notes" name="notes" value={notes} onChange={(e) => setNotes(e.target.value)} />
      <ErrorMessage error={error} />
      <div className="actions">
        <button type="submit" disabled={busy}>
          {submitLabel}
        </button>
        <button type="button" className="secondary" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}
