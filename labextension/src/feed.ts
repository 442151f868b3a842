/**
 * Live job lists: one long-poll loop per distinct query (`GET jobs?since=version`), shared by
 * everyone who subscribes to that query and stopped when the last one leaves.
 *
 * The server holds a request until something changes (or 25 s pass), so a loop costs one open
 * request; a new request never starts less than MIN_INTERVAL_MS after the previous one, and
 * errors back off (1 s, 2 s, 4 s ... up to MAX_BACKOFF_MS).
 */
import { IJobsQuery, IJobsReply, jobsPath, requestAPI } from './api';

export const MIN_INTERVAL_MS = 1000;
export const MAX_BACKOFF_MS = 30000;

export interface IFeedListener {
  reply(reply: IJobsReply): void;
  error(error: unknown): void;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise(resolve => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done);
  });
}

class Feed {
  readonly listeners = new Set<IFeedListener>();
  latest: IJobsReply | null = null;
  private readonly abort = new AbortController();
  private wake: (() => void) | null = null;

  constructor(readonly query: IJobsQuery) {
    void this.run();
  }

  stop(): void {
    this.abort.abort();
  }

  /** Ask again now (after an action), still no sooner than MIN_INTERVAL_MS after the last ask. */
  refresh(): void {
    this.wake?.();
  }

  private async run(): Promise<void> {
    const signal = this.abort.signal;
    let since: number | undefined = undefined;
    let failures = 0;
    while (!signal.aborted) {
      const started = Date.now();
      // a refresh() forgets the version, so that the server answers at once
      const woken = new AbortController();
      this.wake = () => {
        since = undefined;
        woken.abort();
      };
      const both = new AbortController();
      const onAbort = () => both.abort();
      signal.addEventListener('abort', onAbort);
      woken.signal.addEventListener('abort', onAbort);
      try {
        const reply: IJobsReply = await requestAPI<IJobsReply>(jobsPath(this.query, since), {
          signal: both.signal
        });
        failures = 0;
        since = reply.version;
        this.latest = reply;
        for (const listener of [...this.listeners]) {
          listener.reply(reply);
        }
      } catch (error) {
        if (signal.aborted) {
          break;
        }
        if (!woken.signal.aborted) {
          failures += 1;
          for (const listener of [...this.listeners]) {
            listener.error(error);
          }
        }
      } finally {
        signal.removeEventListener('abort', onAbort);
        this.wake = null;
      }
      const elapsed = Date.now() - started;
      const pause = failures
        ? Math.min(MAX_BACKOFF_MS, MIN_INTERVAL_MS * 2 ** (failures - 1))
        : Math.max(0, MIN_INTERVAL_MS - elapsed);
      await sleep(pause, signal);
    }
  }
}

export class FeedHub {
  private readonly feeds = new Map<string, Feed>();

  /** Listen to the jobs matching `query`; returns the function that stops listening. */
  subscribe(query: IJobsQuery, listener: IFeedListener): () => void {
    const key = FeedHub.key(query);
    let feed = this.feeds.get(key);
    if (!feed) {
      feed = new Feed(query);
      this.feeds.set(key, feed);
    } else if (feed.latest) {
      listener.reply(feed.latest);
    }
    feed.listeners.add(listener);
    const joined = feed;
    return () => {
      joined.listeners.delete(listener);
      if (joined.listeners.size === 0) {
        joined.stop();
        if (this.feeds.get(key) === joined) {
          this.feeds.delete(key);
        }
      }
    };
  }

  refresh(): void {
    for (const feed of this.feeds.values()) {
      feed.refresh();
    }
  }

  dispose(): void {
    for (const feed of this.feeds.values()) {
      feed.stop();
    }
    this.feeds.clear();
  }

  static key(query: IJobsQuery): string {
    const entries = Object.entries(query)
      .filter(([, value]) => value)
      .sort(([a], [b]) => a.localeCompare(b));
    return JSON.stringify(entries);
  }
}
