/**
 * nbqueue's JupyterLab extension: the Jobs sidebar (jobs across notebooks and workers, queues,
 * workers, schedules), the commands nbqueue:open-jobs and nbqueue:open-job, and notifications
 * when a notebook's long job ends. It talks to nbqueue's jupyter_server extension under
 * `<base_url>nbqueue/api/`.
 */
import {
  ILabShell,
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, InputDialog } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { FeedHub } from './feed';
import { JobNotifier } from './notify';
import { NbqueueSidebar } from './panel';

const PLUGIN_ID = 'nbqueue-labextension:plugin';

export namespace CommandIDs {
  export const openJobs = 'nbqueue:open-jobs';
  export const openJob = 'nbqueue:open-job';
}

export const nbqueueIcon = new LabIcon({
  name: 'nbqueue:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<rect x="3" y="4" width="18" height="4" rx="1"/>' +
    '<rect x="3" y="10" width="12" height="4" rx="1"/>' +
    '<rect x="3" y="16" width="7" height="4" rx="1"/>' +
    '<path d="M17 12.5l5 3.5-5 3.5z"/>' +
    '</g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The nbqueue Jobs sidebar and job notifications.',
  autoStart: true,
  requires: [ILabShell],
  optional: [ICommandPalette, ISettingRegistry, ILayoutRestorer],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    palette: ICommandPalette | null,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null
  ) => {
    const hub = new FeedHub();
    const sidebar = new NbqueueSidebar(hub);
    sidebar.title.icon = nbqueueIcon;
    shell.add(sidebar, 'left', { rank: 600 });
    restorer?.add(sidebar, sidebar.id);

    const openJob = (id: string) => {
      shell.activateById(sidebar.id);
      sidebar.showJob(id);
    };
    const notifier = new JobNotifier(app, hub, openJob);

    app.commands.addCommand(CommandIDs.openJobs, {
      label: 'nbqueue: Show Jobs',
      caption: 'Open the nbqueue Jobs sidebar',
      icon: nbqueueIcon,
      execute: () => {
        sidebar.closeJob();
        shell.activateById(sidebar.id);
      }
    });
    app.commands.addCommand(CommandIDs.openJob, {
      label: args => (args.id ? `nbqueue: Show Job ${args.id}` : 'nbqueue: Show Job...'),
      caption: 'Open a job of nbqueue by its message id',
      execute: async args => {
        let id = typeof args.id === 'string' ? args.id : '';
        if (!id) {
          const answer = await InputDialog.getText({ title: 'nbqueue job id' });
          id = answer.button.accept ? (answer.value ?? '').trim() : '';
        }
        if (id) {
          openJob(id);
        }
      }
    });
    palette?.addItem({ command: CommandIDs.openJobs, category: 'nbqueue' });
    palette?.addItem({ command: CommandIDs.openJob, category: 'nbqueue' });

    if (settingRegistry) {
      void settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () =>
            notifier.configure({
              notifications: settings.get('notifications').composite as boolean,
              notifyAfterSeconds: settings.get('notifyAfterSeconds').composite as number
            });
          apply();
          settings.changed.connect(apply);
        })
        .catch(reason => {
          console.warn('nbqueue: its settings did not load, notifications use the defaults', reason);
          notifier.configure({ notifications: true, notifyAfterSeconds: 10 });
        });
    } else {
      notifier.configure({ notifications: true, notifyAfterSeconds: 10 });
    }
  }
};

export default plugin;
