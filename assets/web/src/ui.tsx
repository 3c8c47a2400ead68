// Small building blocks every page uses: labelled fields, error and status
// messages that screen readers announce, and a loader hook.
import { useCallback, useEffect, useId, useRef, useState, type InputHTMLAttributes, type ReactNode, type SelectHTMLAttributes, type TextareaHTMLAttributes } from 'react';
import { messageOf } from './api';

type FieldProps = { label: string; hint?: string } & InputHTMLAttributes<HTMLInputElement>;

export function Field({ label, hint, id, ...input }: FieldProps) {
  const fallback = useId();
  const inputId = id ?? fallback;
  const hintId = hint ? `${inputId}-hint` : undefined;
  return (
    <div className="field">
      <label htmlFor={inputId}>{label}</label>
      <input id={inputId} aria-describedby={hintId} {...input} />
      {hint && <small id={hintId}>{hint}</small>}
    </div>
  );
}

export function TextArea({ label, id, ...rest }: { label: string } & TextareaHTMLAttributes<HTMLTextAreaElement>) {
  const fallback = useId();
  const inputId = id ?? fallback;
  return (
    <div className="field">
      <label htmlFor={inputId}>{label}</label>
      <textarea id={inputId} rows={3} {...rest} />
    </div>
  );
}

export function Select({ label, id, children, ...rest }: { label: string } & SelectHTMLAttributes<HTMLSelectElement>) {
  const fallback = useId();
  const inputId = id ?? fallback;
  return (
    <div className="field">
      <label htmlFor={inputId}>{label}</label>
      <select id={inputId} {...rest}>
        {children}
      </select>
    </div>
  );
}

export function ErrorMessage({ error }: { error: unknown }) {
  if (!error) return null;
  return (
    <p className="error" role="alert">
      {messageOf(error)}
    </p>
  );
}

export function Notice({ children }: { children: ReactNode }) {
  return (
    <p className="notice" role="status">
      {children}
    </p>
  );
}

export interface Loaded<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
  setData: (data: T) => void;
}

/** Runs `load` now and whenever `deps` change; `reload` runs it again. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]): Loaded<T> {
  const [data, setData] = useState<T>();
  const [error, setError] = useState<unknown>(null);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const latest = useRef(0);
  useEffect(() => {
    const run = ++latest.current;
    setLoading(true);
    load().then(
      (value) => {
        if (run !== latest.current) return;
        setData(value);
        setError(null);
        setLoading(false);
      },
      (err: unknown) => {
        if (run !== latest.current) return;
        setError(err);
        setLoading(false);
      },
    );
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  return { data, error, loading, reload, setData };
}

/** Sets the document title for the page being shown. */
export function useTitle(title: string): void {
  useEffect(() => {
    document.title = `${title} · PagoDirecto`;
  }, [title]);
}
