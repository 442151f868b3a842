/**
 * The nbqueue sidebar: Jobs (filters, a live table, a job's detail with its actions), Queues,
 * Workers and Schedules, as tabs of one left-area panel.
 */
import { Message } from '@lumino/messaging';
import { Widget } from '@lumino/widgets';

import {
  IJob,
  IJobDetail,
  IJobsQuery,
  IJobsReply,
  IQueue,
  ISchedule,
  ISource,
  IWorker,
  STATUSES,
  ApiError,
  describeApiError,
  isFinal,
  requestAPI
} from './api';
import { FeedHub } from './feed';
import { basename, el, formatDuration, formatTime, jobDuration } from './format';

const TABS = ['jobs', 'queues', 'workers', 'schedules'] as const;
type Tab = (typeof TABS)[number];
const CANCELLABLE = ['enqueued', 'delayed', 'running', 'retrying'];
/** How often an open queues/workers/schedules tab, or a running job's detail, is asked again. */
const PANE_REFRESH_MS = 3000;
const DETAIL_REFRESH_MS = 2000;

export class NbqueueSidebar extends Widget {
  private tab: Tab = 'jobs';
  private query: IJobsQuery = {};
  private unsubscribe: (() => void) | null = null;
  private jobs: IJob[] = [];
  private readonly notebooks = new Set<string>();
  private readonly actors = new Set<string>();
  private readonly queueNames = new Set<string>();
  private detailId: string | null = null;
  private detail: IJobDetail | null = null;
  private detailMessage: { text: string; kind: 'error' | 'info' } | null = null;
  /** Why the open job's detail did not load (cleared by the next load that works). */
  private loadError: string | null = null;
  /** A message Retry just sent: the history may not list it yet, so a 404 is waited out. */
  private justSent: string | null = null;
  /** How many detail loads waited for the history to list ``justSent``. */
  private justSentWaits = 0;
  private detailTimer: number | undefined;
  private paneTimer: number | undefined;
  private searchTimer: number | undefined;
  private detailRequest = 0;

  private readonly sourcesNode = el('div', { class: 'nbq-sources', 'data-testid': 'nbq-sources' });
  private readonly tabsNode = el('div', { class: 'nbq-tabs', role: 'tablist' });
  private readonly listNode = el('div', { class: 'nbq-jobs-list' });
  private readonly detailNode = el('div', { class: 'nbq-detail', 'data-testid': 'nbq-detail' });
  private readonly tbody = el('tbody');
  private readonly countNode = el('div', { class: 'nbq-jobs-count' });
  private readonly panes = new Map<Tab, HTMLElement>();
  private readonly statusSelect = el('select', { 'data-testid': 'nbq-filter-status' });
  private readonly notebookSelect = el('select', { 'data-testid': 'nbq-filter-notebook' });
  private readonly actorInput = el('input', {
    type: 'text',
    placeholder: 'actor',
    list: 'nbq-actors',
    'data-testid': 'nbq-filter-actor'
  });
  private readonly queueInput = el('input', {
    type: 'text',
    placeholder: 'queue',
    list: 'nbq-queues',
    'data-testid': 'nbq-filter-queue'
  });
  private readonly searchInput = el('input', {
    type: 'search',
    placeholder: 'message id',
    'data-testid': 'nbq-search'
  });
  private readonly actorList = el('datalist', { id: 'nbq-actors' });
  private readonly queueList = el('datalist', { id: 'nbq-queues' });

  constructor(private readonly hub: FeedHub) {
    super();
    this.id = 'nbqueue-sidebar';
    this.addClass('nbq-sidebar');
    this.title.caption = 'nbqueue jobs';
    this.node.setAttribute('data-testid', 'nbq-sidebar');
    this.build();
  }

  /** Open a job's detail (switching to the Jobs tab). */
  showJob(id: string): void {
    this.detailId = id;
    this.detail = null;
    this.detailMessage = null;
    this.loadError = null;
    this.justSent = null;
    this.selectTab('jobs');
    this.renderDetail();
    void this.loadDetail();
  }

  closeJob(): void {
    this.detailId = null;
    this.detail = null;
    window.clearTimeout(this.detailTimer);
    this.renderDetail();
  }

  protected onAfterAttach(msg: Message): void {
    if (this.isVisible) {
      this.start();
    }
  }

  protected onAfterShow(msg: Message): void {
    this.start();
  }

  protected onAfterHide(msg: Message): void {
    this.stop();
  }

  protected onBeforeDetach(msg: Message): void {
    this.stop();
  }

  dispose(): void {
    this.stop();
    super.dispose();
  }

  private start(): void {
    this.subscribe();
    this.refreshPane();
    if (this.detailId) {
      void this.loadDetail();
    }
  }

  private stop(): void {
    this.unsubscribe?.();
    this.unsubscribe = null;
    window.clearTimeout(this.paneTimer);
    window.clearTimeout(this.detailTimer);
  }

  private subscribe(): void {
    this.unsubscribe?.();
    this.unsubscribe = this.hub.subscribe(this.query, {
      reply: reply => this.onReply(reply),
      error: error => this.renderSourcesError(error)
    });
  }

  // --- building -----------------------------------------------------------------------------

  private build(): void {
    const header = el('div', { class: 'nbq-header' }, el('span', { class: 'nbq-title' }, 'nbqueue'));
    header.append(this.sourcesNode);
    this.sourcesNode.textContent = 'connecting...';
    for (const tab of TABS) {
      const button = el(
        'button',
        { class: 'nbq-tab', 'data-tab': tab, role: 'tab', type: 'button' },
        tab[0].toUpperCase() + tab.slice(1)
      );
      button.addEventListener('click', () => this.selectTab(tab));
      this.tabsNode.append(button);
      const pane = el('div', { class: 'nbq-pane', 'data-pane': tab });
      this.panes.set(tab, pane);
    }
    this.node.append(header, this.tabsNode, ...this.panes.values());
    this.buildJobsPane(this.panes.get('jobs')!);
    this.selectTab('jobs');
  }

  private buildJobsPane(pane: HTMLElement): void {
    this.statusSelect.append(el('option', { value: '' }, 'any status'));
    for (const status of STATUSES) {
      this.statusSelect.append(el('option', { value: status }, status));
    }
    this.notebookSelect.append(el('option', { value: '' }, 'any notebook'));
    const filters = el(
      'div',
      { class: 'nbq-filters' },
      this.statusSelect,
      this.notebookSelect,
      this.actorInput,
      this.queueInput,
      this.searchInput,
      this.actorList,
      this.queueList
    );
    for (const control of [this.statusSelect, this.notebookSelect]) {
      control.addEventListener('change', () => this.applyFilters());
    }
    for (const control of [this.actorInput, this.queueInput, this.searchInput]) {
      control.addEventListener('input', () => {
        window.clearTimeout(this.searchTimer);
        this.searchTimer = window.setTimeout(() => this.applyFilters(), 300);
      });
    }
    const head = el('tr');
    for (const name of [
      'id',
      'actor',
      'args',
      'status',
      'progress',
      'started',
      'duration',
      'worker',
      'notebook'
    ]) {
      head.append(el('th', {}, name));
    }
    const table = el(
      'table',
      { class: 'nbq-table nbq-jobs-table', 'data-testid': 'nbq-jobs' },
      el('thead', {}, head),
      this.tbody
    );
    this.listNode.append(filters, this.countNode, el('div', { class: 'nbq-scroll' }, table));
    this.detailNode.hidden = true;
    pane.append(this.listNode, this.detailNode);
  }

  private selectTab(tab: Tab): void {
    this.tab = tab;
    for (const button of this.tabsNode.querySelectorAll<HTMLElement>('.nbq-tab')) {
      const selected = button.dataset.tab === tab;
      button.classList.toggle('nbq-mod-selected', selected);
      button.setAttribute('aria-selected', String(selected));
    }
    for (const [name, pane] of this.panes) {
      pane.hidden = name !== tab;
    }
    this.refreshPane();
  }

  private applyFilters(): void {
    const query: IJobsQuery = {
      status: this.statusSelect.value,
      notebook: this.notebookSelect.value,
      actor: this.actorInput.value.trim(),
      queue: this.queueInput.value.trim(),
      q: this.searchInput.value.trim()
    };
    if (FeedHub.key(query) === FeedHub.key(this.query)) {
      return;
    }
    this.query = query;
    if (this.unsubscribe) {
      this.tbody.replaceChildren();
      this.countNode.textContent = 'loading...';
      this.subscribe();
    }
  }

  // --- the job list ---------------------------------------------------------------------------

  private onReply(reply: IJobsReply): void {
    this.jobs = reply.jobs;
    this.renderSources(reply.sources);
    for (const job of reply.jobs) {
      this.remember(job);
    }
    this.renderJobs();
    if (this.detailId && this.detail) {
      const fresh = reply.jobs.find(job => job.id === this.detailId);
      if (
        fresh &&
        (fresh.status !== this.detail.status ||
          JSON.stringify(fresh.progress) !== JSON.stringify(this.detail.progress))
      ) {
        void this.loadDetail();
      }
    }
  }

  /** Offer the notebooks, actors and queues seen so far in the filters. */
  private remember(job: IJob): void {
    if (job.notebook && !this.notebooks.has(job.notebook)) {
      this.notebooks.add(job.notebook);
      this.notebookSelect.append(el('option', { value: job.notebook }, job.notebook));
    }
    if (job.actor && !this.actors.has(job.actor)) {
      this.actors.add(job.actor);
      this.actorList.append(el('option', { value: job.actor }));
    }
    if (job.queue && !this.queueNames.has(job.queue)) {
      this.queueNames.add(job.queue);
      this.queueList.append(el('option', { value: job.queue }));
    }
  }

  private renderJobs(): void {
    const rows = this.jobs.map(job => this.jobRow(job));
    this.tbody.replaceChildren(...rows);
    this.countNode.textContent = this.jobs.length === 1 ? '1 job' : `${this.jobs.length} jobs`;
    if (this.jobs.length === 0) {
      this.tbody.append(
        el('tr', { class: 'nbq-empty' }, el('td', { colspan: '9' }, 'No jobs match.'))
      );
    }
  }

  private jobRow(job: IJob): HTMLElement {
    const row = el(
      'tr',
      {
        class: 'nbq-jobs-row',
        'data-job-id': job.id,
        'data-status': job.status,
        'data-source': job.source,
        title: `${job.actor}(${job.args}) ${job.id}`
      },
      el('td', { class: 'nbq-col-id' }, el('code', {}, job.id.slice(0, 8))),
      el('td', { class: 'nbq-col-actor' }, job.actor),
      el('td', { class: 'nbq-col-args' }, job.args),
      el('td', { class: 'nbq-col-status' }, badge(job.status)),
      el('td', { class: 'nbq-col-progress' }, progressBar(job)),
      el('td', { class: 'nbq-col-started' }, formatTime(job.started_at)),
      el('td', { class: 'nbq-col-duration' }, formatDuration(jobDuration(job))),
      el('td', { class: 'nbq-col-worker' }, job.worker ?? ''),
      el('td', { class: 'nbq-col-notebook', title: job.notebook ?? '' }, basename(job.notebook))
    );
    row.addEventListener('click', () => this.showJob(job.id));
    return row;
  }

  private renderSources(sources: ISource[]): void {
    const items = sources.map(source =>
      el(
        'span',
        {
          class: 'nbq-source',
          'data-source': source.name,
          'data-ok': String(source.ok),
          title: source.url
        },
        source.ok
          ? `${source.name}: ok`
          : `${source.name}: unreachable${source.error ? ` (${source.error})` : ''}`
      )
    );
    this.sourcesNode.replaceChildren(...items);
    this.sourcesNode.dataset.state = sources.every(source => source.ok) ? 'ok' : 'error';
  }

  private renderSourcesError(error: unknown): void {
    this.sourcesNode.replaceChildren(
      el('span', { class: 'nbq-source', 'data-source': 'api', 'data-ok': 'false' }, describeApiError(error))
    );
    this.sourcesNode.dataset.state = 'error';
  }

  // --- a job's detail -------------------------------------------------------------------------

  private async loadDetail(): Promise<void> {
    const id = this.detailId;
    if (!id) {
      return;
    }
    const request = ++this.detailRequest;
    window.clearTimeout(this.detailTimer);
    // A copy Retry just sent is fetched once the list shows it (the kernel or the server sends
    // it within a second or two), so that no request is answered 404 meanwhile; after a few
    // rounds it is fetched anyway (a filter may hide it from the list).
    if (id === this.justSent && !this.jobs.some(job => job.id === id) && this.justSentWaits < 10) {
      this.justSentWaits += 1;
      this.renderDetail();
      this.detailTimer = window.setTimeout(() => void this.loadDetail(), DETAIL_REFRESH_MS);
      return;
    }
    try {
      const detail = await requestAPI<IJobDetail>(`jobs/${encodeURIComponent(id)}`);
      if (request !== this.detailRequest || id !== this.detailId) {
        return;
      }
      this.detail = detail;
      this.loadError = null;
      this.justSent = null;
    } catch (error) {
      if (request !== this.detailRequest || id !== this.detailId) {
        return;
      }
      const notYet = error instanceof ApiError && error.status === 404 && id === this.justSent;
      this.loadError = notYet ? null : (error as Error).message;
    }
    this.renderDetail();
    if (this.isVisible && (!this.detail || !isFinal(this.detail.status))) {
      this.detailTimer = window.setTimeout(() => void this.loadDetail(), DETAIL_REFRESH_MS);
    }
  }

  private renderDetail(): void {
    const open = this.detailId !== null;
    this.listNode.hidden = open;
    this.detailNode.hidden = !open;
    if (!open) {
      this.detailNode.replaceChildren();
      delete this.detailNode.dataset.jobId;
      return;
    }
    const back = el('button', { class: 'nbq-back', type: 'button', 'data-testid': 'nbq-back' }, '< jobs');
    back.addEventListener('click', () => this.closeJob());
    const children: HTMLElement[] = [back];
    this.detailNode.dataset.jobId = this.detailId!;
    const job = this.detail;
    if (!job) {
      children.push(el('div', { class: 'nbq-detail-loading' }, `loading ${this.detailId}...`));
    } else {
      this.detailNode.dataset.status = job.status;
      children.push(
        el(
          'div',
          { class: 'nbq-detail-title' },
          el('span', { class: 'nbq-detail-call' }, `${job.actor}(${job.args})`),
          badge(job.status)
        ),
        fields([
          ['id', job.id],
          ['queue', job.queue],
          ['source', job.source],
          ['notebook', job.notebook ?? ''],
          ['worker', job.worker ?? ''],
          ['enqueued', formatTime(job.enqueued_at)],
          ['started', formatTime(job.started_at)],
          ['finished', formatTime(job.finished_at)],
          ['duration', formatDuration(jobDuration(job))],
          ['retries', String(job.retries)]
        ]),
        progressBar(job),
        this.actions(job)
      );
      if (job.status === 'dead' && job.dead_reason) {
        children.push(
          el('div', { class: 'nbq-detail-dead-reason', 'data-testid': 'nbq-dead-reason' }, `dead: ${job.dead_reason}`)
        );
      }
      children.push(el('div', { class: 'nbq-detail-heading' }, 'output'));
      children.push(
        el(
          'pre',
          { class: 'nbq-detail-output', 'data-testid': 'nbq-output' },
          (job.events_truncated ? '...\n' : '') + (job.output || '')
        )
      );
      if (job.error) {
        children.push(
          el(
            'div',
            { class: 'nbq-detail-heading nbq-detail-exception', 'data-testid': 'nbq-error' },
            `${job.error.type}: ${job.error.message}`
          )
        );
        if (job.error.traceback) {
          children.push(
            el(
              'pre',
              { class: 'nbq-detail-traceback', 'data-testid': 'nbq-traceback' },
              job.error.traceback
            )
          );
        }
      } else if (job.status === 'succeeded') {
        children.push(el('div', { class: 'nbq-detail-heading' }, 'result'));
        const text =
          job.result_repr ??
          (job.result === null || job.result === undefined
            ? '(no result stored)'
            : JSON.stringify(job.result, null, 2));
        children.push(el('pre', { class: 'nbq-detail-result', 'data-testid': 'nbq-result' }, text));
      }
    }
    if (this.loadError) {
      children.splice(
        1,
        0,
        el('div', { class: 'nbq-detail-error', 'data-testid': 'nbq-detail-error' }, this.loadError)
      );
    }
    if (this.detailMessage) {
      children.splice(
        1,
        0,
        el(
          'div',
          {
            class: this.detailMessage.kind === 'error' ? 'nbq-detail-error' : 'nbq-detail-info',
            'data-testid': this.detailMessage.kind === 'error' ? 'nbq-detail-error' : 'nbq-detail-info'
          },
          this.detailMessage.text
        )
      );
    }
    this.detailNode.replaceChildren(...children);
  }

  private actions(job: IJobDetail): HTMLElement {
    const bar = el('div', { class: 'nbq-actions' });
    const add = (action: 'cancel' | 'retry' | 'requeue', label: string) => {
      const button = el(
        'button',
        { class: 'nbq-action jp-mod-styled', 'data-action': action, type: 'button' },
        label
      );
      button.addEventListener('click', () => void this.act(job.id, action, button));
      bar.append(button);
    };
    if (CANCELLABLE.includes(job.status)) {
      add('cancel', 'Cancel');
    }
    if (isFinal(job.status)) {
      add('retry', 'Retry');
    }
    if (job.status === 'dead') {
      add('requeue', 'Requeue');
    }
    return bar;
  }

  private async act(
    id: string,
    action: 'cancel' | 'retry' | 'requeue',
    button: HTMLButtonElement
  ): Promise<void> {
    button.disabled = true;
    try {
      const reply = await requestAPI<{ ok: boolean; id?: string }>(
        `jobs/${encodeURIComponent(id)}/${action}`,
        { method: 'POST', body: '{}' }
      );
      if (id !== this.detailId) {
        return;
      }
      const text =
        action === 'retry'
          ? `sent again as ${reply.id ?? 'a new message'}`
          : action === 'cancel'
            ? 'cancel requested'
            : 'moved back to its queue';
      this.detailMessage = { text, kind: 'info' };
      this.hub.refresh();
      if (action === 'retry' && reply.id) {
        this.detailId = reply.id;
        this.justSent = reply.id;
        this.justSentWaits = 0;
        this.detail = null;
        this.renderDetail();
      }
    } catch (error) {
      if (id !== this.detailId) {
        return;
      }
      this.detailMessage = { text: `${action} failed: ${(error as Error).message}`, kind: 'error' };
      button.disabled = false;
    }
    await this.loadDetail();
  }

  // --- queues, workers, schedules -------------------------------------------------------------

  private refreshPane(): void {
    window.clearTimeout(this.paneTimer);
    if (!this.isVisible || this.tab === 'jobs') {
      return;
    }
    const tab = this.tab;
    void this.loadPane(tab).then(() => {
      if (this.isVisible && this.tab === tab) {
        this.paneTimer = window.setTimeout(() => this.refreshPane(), PANE_REFRESH_MS);
      }
    });
  }

  private async loadPane(tab: Exclude<Tab, 'jobs'>): Promise<void> {
    const pane = this.panes.get(tab)!;
    let table: HTMLElement;
    try {
      if (tab === 'queues') {
        const { queues } = await requestAPI<{ queues: IQueue[] }>('queues');
        table = grid(
          'nbq-queues',
          ['queue', 'ready', 'delayed', 'in flight', 'dead', 'source'],
          queues.map(q => ({
            attrs: { class: 'nbq-queues-row', 'data-queue': q.name, 'data-source': q.source },
            cells: [q.name, q.ready, q.delayed, q.in_flight, q.dead, q.source].map(String)
          }))
        );
      } else if (tab === 'workers') {
        const { workers } = await requestAPI<{ workers: IWorker[] }>('workers');
        table = grid(
          'nbq-workers',
          ['host', 'pid', 'processes x threads', 'queues', 'running now', 'last seen'],
          workers.map(w => ({
            attrs: { class: 'nbq-workers-row', 'data-worker-id': w.id, 'data-source': w.source },
            cells: [
              w.host,
              String(w.pid),
              `${w.processes} x ${w.threads}`,
              w.queues.join(', '),
              w.running.map(r => `${r.actor} (${r.id.slice(0, 8)})`).join(', ') || 'idle',
              formatTime(w.last_seen)
            ]
          }))
        );
      } else {
        const { schedules } = await requestAPI<{ schedules: ISchedule[] }>('schedules');
        table = grid(
          'nbq-schedules',
          ['name', 'actor', 'rule', 'next run', 'last run', 'last status', 'paused'],
          schedules.map(s => ({
            attrs: {
              class: 'nbq-schedules-row',
              'data-schedule': s.name,
              'data-paused': String(s.paused)
            },
            cells: [
              s.name,
              s.actor,
              s.rule,
              formatTime(s.next_run),
              formatTime(s.last_run),
              s.last_status ?? '',
              s.paused ? 'paused' : ''
            ]
          }))
        );
      }
    } catch (error) {
      table = el('div', { class: 'nbq-pane-error', 'data-testid': 'nbq-pane-error' }, describeApiError(error));
    }
    if (this.tab === tab) {
      pane.replaceChildren(table);
    }
  }
}

function badge(status: string): HTMLElement {
  return el('span', { class: 'nbq-badge', 'data-status': status }, status);
}

function progressBar(job: IJob): HTMLElement {
  const progress = job.progress;
  const node = el('div', { class: 'nbq-progress', 'data-status': job.status });
  if (!progress) {
    if (job.status === 'succeeded') {
      node.append(el('div', { class: 'nbq-progress-bar', style: 'width: 100%' }));
    }
    return node;
  }
  const total = progress.total;
  const fraction = total ? Math.max(0, Math.min(1, progress.done / total)) : null;
  const label = total ? `${progress.done}/${total}` : String(progress.done);
  node.title = progress.desc ? `${progress.desc}: ${label}` : label;
  node.append(
    el('div', {
      class: fraction === null ? 'nbq-progress-bar nbq-mod-indeterminate' : 'nbq-progress-bar',
      style: `width: ${fraction === null ? 100 : Math.round(fraction * 100)}%`
    }),
    el('span', { class: 'nbq-progress-label' }, label)
  );
  return node;
}

function fields(rows: [string, string][]): HTMLElement {
  const list = el('dl', { class: 'nbq-fields' });
  for (const [name, value] of rows) {
    if (value) {
      list.append(el('dt', {}, name), el('dd', { 'data-field': name }, value));
    }
  }
  return list;
}

function grid(
  testid: string,
  columns: string[],
  rows: { attrs: Record<string, string>; cells: string[] }[]
): HTMLElement {
  const head = el('tr');
  for (const column of columns) {
    head.append(el('th', {}, column));
  }
  const body = el('tbody');
  for (const row of rows) {
    const tr = el('tr', row.attrs);
    for (const cell of row.cells) {
      tr.append(el('td', {}, cell));
    }
    body.append(tr);
  }
  if (rows.length === 0) {
    body.append(el('tr', { class: 'nbq-empty' }, el('td', { colspan: String(columns.length) }, 'none')));
  }
  return el(
    'div',
    { class: 'nbq-scroll' },
    el('table', { class: 'nbq-table', 'data-testid': testid }, el('thead', {}, head), body)
  );
}
