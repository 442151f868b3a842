/**
 * Notifications: a job sent from a notebook that reaches a final status after running longer
 * than `notifyAfterSeconds`, or while its notebook is not the current tab, is announced with a
 * "Show job" action. It listens to the unfiltered job list of the shared FeedHub.
 */
import { JupyterFrontEnd } from '@jupyterlab/application';
import { Notification } from '@jupyterlab/apputils';

import { IJob, IJobsReply, isFinal } from './api';
import { FeedHub } from './feed';
import { basename, formatDuration, jobDuration } from './format';

const ANNOUNCED = ['succeeded', 'failed', 'dead', 'aborted'];

export interface INotifySettings {
  notifications: boolean;
  notifyAfterSeconds: number;
}

export class JobNotifier {
  private unsubscribe: (() => void) | null = null;
  /** The last status seen of each job; null until the first reply (the baseline). */
  private seen: Map<string, string> | null = null;
  private settings: INotifySettings = { notifications: true, notifyAfterSeconds: 10 };

  constructor(
    private readonly app: JupyterFrontEnd,
    private readonly hub: FeedHub,
    private readonly openJob: (id: string) => void
  ) {}

  configure(settings: INotifySettings): void {
    this.settings = settings;
    if (settings.notifications && !this.unsubscribe) {
      this.seen = null;
      this.unsubscribe = this.hub.subscribe(
        {},
        { reply: reply => this.onReply(reply), error: () => undefined }
      );
    } else if (!settings.notifications && this.unsubscribe) {
      this.unsubscribe();
      this.unsubscribe = null;
    }
  }

  dispose(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
  }

  private onReply(reply: IJobsReply): void {
    const baseline = this.seen === null;
    const seen = this.seen ?? new Map<string, string>();
    for (const job of reply.jobs) {
      const before = seen.get(job.id);
      seen.set(job.id, job.status);
      if (baseline || !job.notebook || !ANNOUNCED.includes(job.status)) {
        continue;
      }
      // a job first seen already final ended between two replies; one seen final is announced
      if (before !== undefined && isFinal(before)) {
        continue;
      }
      if (this.shouldAnnounce(job)) {
        this.announce(job);
      }
    }
    // forget jobs that left the list, so that the map stays as small as the list
    const listed = new Set(reply.jobs.map(job => job.id));
    for (const id of seen.keys()) {
      if (!listed.has(id)) {
        seen.delete(id);
      }
    }
    this.seen = seen;
  }

  private shouldAnnounce(job: IJob): boolean {
    const duration = jobDuration(job) ?? 0;
    return duration >= this.settings.notifyAfterSeconds * 1000 || !this.notebookIsVisible(job);
  }

  /** Whether the job's notebook is the current widget of a visible browser tab. */
  private notebookIsVisible(job: IJob): boolean {
    if (document.hidden) {
      return false;
    }
    const current = this.app.shell.currentWidget as { context?: { path?: string } } | null;
    return Boolean(current?.context?.path && current.context.path === job.notebook);
  }

  private announce(job: IJob): void {
    const took = formatDuration(jobDuration(job));
    const text =
      `${job.actor}(${job.args}) ${job.status}` +
      (took ? ` after ${took}` : '') +
      (job.notebook ? ` (${basename(job.notebook)})` : '');
    const options = {
      autoClose: job.status === 'succeeded' ? 10000 : (false as const),
      actions: [
        {
          label: 'Show job',
          caption: `Open job ${job.id} in the nbqueue sidebar`,
          callback: () => this.openJob(job.id)
        }
      ]
    };
    if (job.status === 'succeeded') {
      Notification.success(text, options);
    } else if (job.status === 'aborted') {
      Notification.info(text, options);
    } else {
      Notification.error(text, options);
    }
  }
}
