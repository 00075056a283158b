// Types of runq.js, for TypeScript (`import { poll } from "./runq.js"` finds them beside it).

export type JobState = "queued" | "running" | "retrying" | "succeeded" | "failed" | "cancelled";

/** What `GET /jobs/{id}/status` answers. */
export interface JobStatus {
  id: string;
  status: JobState;
  /** 0 to 1. */
  progress: number;
  /** The run's last progress message. */
  message?: string | null;
  attempt: number;
  max_attempts: number;
  created_at: string;
  started_at?: string | null;
  finished_at?: string | null;
  updated_at: string;
  /** When to ask again; absent once finished. */
  poll_after_ms?: number;
}

export interface PollOptions {
  /** The API's URL (`https://api.example.com`); default: this page's origin. */
  baseUrl?: string;
  /** The bearer token, or a function called before each request (to refresh it). */
  token?: string | (() => string | Promise<string>);
  /** Called with each new status, the last one included. */
  onProgress?: (status: JobStatus) => void;
  /** Called when a request failed and will be retried in `delayMs`. */
  onRetry?: (error: Error, delayMs: number) => void;
  /** Stops polling: the promise rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Seconds each long-poll may be held by the API, 0 to 30 (default 25). */
  wait?: number;
  /** The longest pause between retries (default 30000). */
  maxRetryDelayMs?: number;
  /** The fetch to use (default: the global one). */
  fetch?: typeof fetch;
}

/** The statuses a job never leaves. */
export const FINISHED: readonly JobState[];

/** A refusal by the API (a 4xx other than 408 and 429): retrying won't help. */
export class RunqError extends Error {
  constructor(status: number, problem: { title?: string; detail?: string; [key: string]: unknown } | null);
  /** The HTTP status. */
  status: number;
  /** The `application/problem+json` body, when there was one. */
  problem: { title?: string; detail?: string; [key: string]: unknown } | null;
}

/**
 * Follows job `jobId` until it is finished; resolves with its final status. Rejects with a
 * `RunqError` when the API refuses (401, 404, ...), or with `signal.reason` when aborted.
 */
export function poll(jobId: string, options?: PollOptions): Promise<JobStatus>;
