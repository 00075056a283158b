// @ts-check
/**
 * runq's browser client: follow a job's status until it finishes.
 *
 * One ES module, no dependencies, no build step: copy it into your app, or serve it and
 * `import { poll } from "/runq.js"`. Types are in JSDoc here (for `checkJs`) and in `runq.d.ts`
 * beside it (for TypeScript).
 *
 *   const job = await poll(id, { baseUrl: "https://api.example.com", token, onProgress: s => bar(s.progress) });
 *
 * It long-polls `GET /jobs/{id}/status?wait=N` with the last `ETag` as `If-None-Match` (the API
 * answers 304 when nothing changed in N seconds, at once when something did), keeps to the
 * pace the API asks for (`poll_after_ms`), and retries through network drops, 5xx, 408 and 429
 * with backoff (at least `Retry-After`), resuming from the last status it saw. A page on
 * another origin needs that origin in the API's `RUNQ_CORS_ORIGINS`.
 *
 * @module runq
 */

/** @typedef {"queued" | "running" | "retrying" | "succeeded" | "failed" | "cancelled"} JobState */

/**
 * What `GET /jobs/{id}/status` answers.
 * @typedef {object} JobStatus
 * @property {string} id
 * @property {JobState} status
 * @property {number} progress 0 to 1
 * @property {string | null} [message] the run's last progress message
 * @property {number} attempt
 * @property {number} max_attempts
 * @property {string} created_at RFC 3339
 * @property {string | null} [started_at]
 * @property {string | null} [finished_at]
 * @property {string} updated_at
 * @property {number} [poll_after_ms] when to ask again; absent once finished
 */

/**
 * @typedef {object} PollOptions
 * @property {string} [baseUrl] the API's URL (`https://api.example.com`); default: this page's origin
 * @property {string | (() => string | Promise<string>)} [token] the bearer token, or a function
 *   called before each request (to refresh it)
 * @property {(status: JobStatus) => void} [onProgress] called with each new status, the last one included
 * @property {(error: Error, delayMs: number) => void} [onRetry] called when a request failed and
 *   will be retried in `delayMs` (show "reconnecting…")
 * @property {AbortSignal} [signal] stops polling: the promise rejects with the signal's reason
 * @property {number} [wait] seconds each long-poll may be held by the API, 0 to 30 (default 25)
 * @property {number} [maxRetryDelayMs] the longest pause between retries (default 30000)
 * @property {typeof fetch} [fetch] the fetch to use (default: the global one)
 */

/** The statuses a job never leaves. */
export const FINISHED = Object.freeze(["succeeded", "failed", "cancelled"]);

/** A refusal by the API (a 4xx other than 408 and 429): retrying won't help. */
export class RunqError extends Error {
  /**
   * @param {number} status the HTTP status
   * @param {{title?: string, detail?: string, [key: string]: unknown} | null} problem the
   *   `application/problem+json` body, when there was one
   */
  constructor(status, problem) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.name = "RunqError";
    /** @type {number} */
    this.status = status;
    this.problem = problem;
  }
}

const FIRST_RETRY_MS = 250;
const MIN_PACE_MS = 100;

/**
 * Follows job `jobId` until it is finished; resolves with its final status.
 * Rejects with a {@link RunqError} when the API refuses (401 bad token, 404 unknown job, ...),
 * or with `signal.reason` when aborted.
 *
 * @param {string} jobId
 * @param {PollOptions} [options]
 * @returns {Promise<JobStatus>}
 */
export async function poll(jobId, options = {}) {
  const { signal, onProgress, onRetry } = options;
  const wait = Math.max(0, Math.min(30, Math.floor(options.wait ?? 25)));
  const maxRetryDelayMs = options.maxRetryDelayMs ?? 30_000;
  const doFetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  const base = (options.baseUrl ?? "").replace(/\/+$/, "");
  const url = `${base}/jobs/${encodeURIComponent(jobId)}/status`;

  /** @type {string | null} */
  let etag = null;
  /** @type {JobStatus | null} */
  let last = null;
  let failures = 0;
  for (;;) {
    signal?.throwIfAborted();
    /** @type {Record<string, string>} */
    const headers = { Accept: "application/json" };
    const token = typeof options.token === "function" ? await options.token() : options.token;
    if (token) headers.Authorization = `Bearer ${token}`;
    // Long-poll only once there is a status to compare with: the first answer comes at once.
    if (etag) headers["If-None-Match"] = etag;
    const target = etag && wait > 0 ? `${url}?wait=${wait}` : url;
    const started = Date.now();
    /** @type {Response} */
    let response;
    /** @type {JobStatus | null} */
    let status = null;
    try {
      // `no-store`: this client does its own revalidation, and must see the 304s.
      response = await doFetch(target, { headers, signal, cache: "no-store", credentials: "omit" });
      if (response.ok && response.status !== 304) status = await response.json();
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      // A network drop, the API restarting, or a CORS refusal (which looks the same to a page).
      await retryAfter(asError(error), failures++, null);
      continue;
    }

    if (response.status === 304) {
      failures = 0;
    } else if (status) {
      failures = 0;
      etag = response.headers.get("ETag");
      last = status;
      onProgress?.(status);
      if (FINISHED.includes(status.status)) return status;
    } else if (response.status >= 500 || response.status === 408 || response.status === 429) {
      const error = new RunqError(response.status, await problem(response));
      await retryAfter(error, failures++, response.headers.get("Retry-After"));
      continue;
    } else {
      throw new RunqError(response.status, await problem(response));
    }
    // The API's pace, counted from when this request started (a long-poll has waited already).
    const pace = Math.max(MIN_PACE_MS, last?.poll_after_ms ?? 1000);
    await sleep(pace - (Date.now() - started), signal);
  }

  /**
   * @param {Error} error
   * @param {number} failed the failures before this one
   * @param {string | null} retryAfterHeader
   */
  async function retryAfter(error, failed, retryAfterHeader) {
    const exp = Math.min(maxRetryDelayMs, FIRST_RETRY_MS * 2 ** Math.min(failed, 16));
    const jittered = exp * (0.5 + Math.random() / 2);
    const seconds = Number(retryAfterHeader);
    const floor = Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : 0;
    const delay = Math.round(Math.min(maxRetryDelayMs, Math.max(jittered, floor)));
    onRetry?.(error, delay);
    await sleep(delay, signal);
  }
}

/**
 * @param {Response} response
 * @returns {Promise<RunqError["problem"]>}
 */
async function problem(response) {
  try {
    const body = await response.json();
    return body && typeof body === "object" ? body : null;
  } catch {
    return null;
  }
}

/** @param {unknown} error */
function asError(error) {
  return error instanceof Error ? error : new Error(String(error));
}

/**
 * Resolves after `ms` (at once when not positive); rejects with the signal's reason on abort.
 * @param {number} ms
 * @param {AbortSignal | undefined} signal
 * @returns {Promise<void>}
 */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    if (ms <= 0) return resolve();
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
