/**
 * The REST contract of nbqueue's jupyter_server extension (v1): its types and one request helper.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

export const FINAL_STATUSES = ['succeeded', 'failed', 'skipped', 'aborted', 'dead'] as const;
export const STATUSES = [
  'enqueued',
  'delayed',
  'running',
  'retrying',
  ...FINAL_STATUSES
] as const;
export type Status = (typeof STATUSES)[number];

export interface IProgress {
  done: number;
  total: number | null;
  desc: string | null;
}

export interface IJob {
  id: string;
  actor: string;
  queue: string;
  args: string;
  status: Status;
  progress: IProgress | null;
  enqueued_at: number | null;
  started_at: number | null;
  finished_at: number | null;
  duration_ms: number | null;
  worker: string | null;
  notebook: string | null;
  kernel: string | null;
  source: string;
  retries: number;
  dead_reason: string | null;
}

export interface IJobDetail extends IJob {
  output: string;
  result: unknown;
  result_repr: string | null;
  error: { type: string; message: string; traceback: string } | null;
  events_truncated: boolean;
}

export interface ISource {
  name: string;
  url: string;
  ok: boolean;
  error: string | null;
}

export interface IJobsReply {
  jobs: IJob[];
  version: number;
  sources: ISource[];
}

export interface IQueue {
  name: string;
  ready: number;
  delayed: number;
  in_flight: number;
  dead: number;
  source: string;
}

export interface IWorker {
  id: string;
  host: string;
  pid: number;
  processes: number;
  threads: number;
  queues: string[];
  running: { id: string; actor: string }[];
  last_seen: number | null;
  source: string;
}

export interface ISchedule {
  name: string;
  actor: string;
  rule: string;
  next_run: number | null;
  last_run: number | null;
  last_status: string | null;
  paused: boolean;
}

/** The filters of `GET jobs`; empty values are left out of the query. */
export interface IJobsQuery {
  status?: string;
  actor?: string;
  queue?: string;
  notebook?: string;
  q?: string;
}

export function isFinal(status: string): boolean {
  return (FINAL_STATUSES as readonly string[]).includes(status);
}

/** A failed call: the HTTP status (0 when the server could not be reached) and its message. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
  }
}

export function jobsPath(query: IJobsQuery, since?: number, limit = 200): string {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries(query)) {
    if (value) {
      params.set(key, value);
    }
  }
  params.set('limit', String(limit));
  if (since !== undefined) {
    params.set('since', String(since));
  }
  return `jobs?${params.toString()}`;
}

/** Call `<base_url>nbqueue/api/<path>` with Jupyter's token and XSRF header. */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, 'nbqueue/api', path);
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    if ((error as Error).name === 'AbortError' || init.signal?.aborted) {
      throw error;
    }
    throw new ApiError(0, `the Jupyter server is unreachable (${(error as Error).message})`);
  }
  const text = await response.text();
  let body: any = null;
  if (text) {
    try {
      body = JSON.parse(text);
    } catch {
      body = null;
    }
  }
  if (!response.ok) {
    const detail = body && typeof body.message === 'string' ? body.message : response.statusText;
    throw new ApiError(response.status, `${response.status} ${detail}`.trim());
  }
  return body as T;
}

/** What the source line says when the API itself fails. */
export function describeApiError(error: unknown): string {
  if (error instanceof ApiError && error.status === 404) {
    return (
      'nbqueue server extension: not found (404); install nbqueue[lab] in the ' +
      "server's environment and restart JupyterLab"
    );
  }
  if (error instanceof ApiError && error.status === 0) {
    return `nbqueue server extension: ${error.message}`;
  }
  return `nbqueue server extension: ${(error as Error).message}`;
}
