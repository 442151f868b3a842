/** Small DOM and text helpers of the sidebar. */

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string | null)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === 'class') {
      node.className = value;
    } else {
      node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child !== null) {
      node.append(child);
    }
  }
  return node;
}

export function formatTime(ms: number | null): string {
  if (ms === null || ms === undefined) {
    return '';
  }
  const date = new Date(ms);
  const today = new Date();
  return date.toDateString() === today.toDateString()
    ? date.toLocaleTimeString()
    : date.toLocaleString();
}

export function formatDuration(ms: number | null): string {
  if (ms === null || ms === undefined) {
    return '';
  }
  if (ms < 1000) {
    return `${Math.round(ms)} ms`;
  }
  const seconds = ms / 1000;
  if (seconds < 60) {
    return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  }
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) {
    return `${minutes} min ${Math.round(seconds % 60)} s`;
  }
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

/** The duration of a job: its own figure, or the time since it started while it runs. */
export function jobDuration(job: {
  duration_ms: number | null;
  started_at: number | null;
  finished_at: number | null;
}): number | null {
  if (job.duration_ms !== null && job.duration_ms !== undefined) {
    return job.duration_ms;
  }
  if (job.started_at) {
    return (job.finished_at ?? Date.now()) - job.started_at;
  }
  return null;
}

export function basename(path: string | null): string {
  if (!path) {
    return '';
  }
  const parts = path.split('/');
  return parts[parts.length - 1];
}
