// gpuhub's notices as JupyterLab notifications: a cull warning (idle, session length, GPU-hour
// budget) appears as a warning toast, and an idle warning offers "Keep my server", which posts
// the server's activity to the hub with the server's own token (gpuhub_labnotices.py, the
// Jupyter server half).  When the culler lifts the warning the toast says so.
//
// "Your turn": another server of the user that waited (a GPU server in line, with named servers)
// is ready; the notification links to it.
//
// Polled only while the tab is visible: a hidden tab must not keep an idle server alive.
import { Notification } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

const POLL_MS = 10000;
const LIFTED_CLOSE_MS = 15000;

async function call(settings, path, init) {
  const url = URLExt.join(settings.baseUrl, path);
  const response = await ServerConnection.makeRequest(url, init || {}, settings);
  let body = {};
  try {
    body = await response.json();
  } catch (e) {
    body = {};
  }
  if (!response.ok) {
    throw new Error(body.message || `${response.status} ${response.statusText}`);
  }
  return body;
}

function timeLeft(cullAt) {
  const seconds = Math.max(0, Math.round(cullAt - Date.now() / 1000));
  if (seconds < 60) {
    return `${seconds} s`;
  }
  return `about ${Math.round(seconds / 60)} min`;
}

// Short enough for a toast (JupyterLab cuts toasts at 140 characters); the hub's home page and
// ~/CULL-WARNING.txt have the culler's whole message.
const WHY = {
  idle: 'your server is idle and stops',
  'max-age': 'your session reaches its longest allowed length; your server stops',
  'gpu-budget': 'your GPU-hour budget runs out; your GPU server stops',
  'over-share': 'your idle server holds a unit beyond your group\'s share that others wait for; it stops',
  reclaim: 'the unit your server holds was lent from a reservation and is needed back; your server stops'
};

function warningText(notice) {
  const at = new Date(notice.cull_at * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  const why = WHY[notice.reason] || 'your server stops';
  const head = `GPU Hub: ${why} at ${at} (${timeLeft(notice.cull_at)} left).`;
  return notice.keepable ? `${head} Still working?` : `${head} Save your work.`;
}

class GPUHubNotices {
  constructor(settings) {
    this.settings = settings;
    this.shown = new Map(); // notice id -> { toast, text, kept }
    this.busy = false;
  }

  async poll() {
    if (this.busy || document.hidden) {
      return;
    }
    this.busy = true;
    try {
      const data = await call(this.settings, 'gpuhub/notices');
      const current = new Set();
      for (const notice of data.notices || []) {
        current.add(notice.id);
        this.show(notice);
      }
      for (const [id, entry] of this.shown) {
        if (!current.has(id)) {
          this.shown.delete(id);
          if (entry.turn) {
            Notification.dismiss(entry.toast);
          } else {
            this.lifted(entry, (data.notices || []).some(n => n.kind !== 'your-turn'));
          }
        }
      }
    } catch (e) {
      console.warn('gpuhub: notices could not be read:', e);
    } finally {
      this.busy = false;
    }
  }

  showTurn(notice) {
    if (this.shown.has(notice.id)) {
      return;
    }
    // the hub's URL of the server: a path on this origin (the hub's proxy serves both)
    const url = (notice.url || '').startsWith('/') ? notice.url : '/hub/home';
    const toast = Notification.success(`GPU Hub: your turn. Your server \u201c${notice.server}\u201d is ready.`, {
      autoClose: false,
      actions: [{
        label: 'Open it',
        caption: `Open ${notice.server} in a new tab`,
        displayType: 'accent',
        callback: event => {
          event.preventDefault();
          window.open(url, '_blank');
        }
      }]
    });
    this.shown.set(notice.id, { toast, turn: true });
  }

  show(notice) {
    if (notice.kind === 'your-turn') {
      this.showTurn(notice);
      return;
    }
    const entry = this.shown.get(notice.id);
    if (entry && entry.kept) {
      return; // "Kept" stays until the culler lifts the warning
    }
    const text = warningText(notice);
    const actions = notice.keepable
      ? [{
          label: 'Keep my server',
          caption: 'Tell the hub you are still working: the idle warning is lifted',
          displayType: 'accent',
          callback: event => {
            event.preventDefault();
            void this.keep(notice.id);
          }
        }]
      : [];
    if (!entry) {
      const toast = Notification.warning(text, { autoClose: false, actions, data: { gpuhub: notice.id } });
      this.shown.set(notice.id, { toast, text, kept: false, actions });
    } else if (entry.text !== text) {
      Notification.update({ id: entry.toast, message: text, type: 'warning', autoClose: false, actions });
      entry.text = text;
    }
  }

  async keep(id) {
    const entry = this.shown.get(id);
    if (!entry) {
      return;
    }
    try {
      await call(this.settings, 'gpuhub/keep', { method: 'POST', body: '{}' });
      entry.kept = true;
      Notification.update({
        id: entry.toast,
        type: 'in-progress',
        message: 'GPU Hub: kept. Your activity reached the hub; the warning is lifted at the culler\'s next pass.',
        autoClose: false,
        actions: []
      });
    } catch (e) {
      Notification.update({
        id: entry.toast,
        type: 'error',
        message: `GPU Hub: ${e.message}`,
        autoClose: false,
        actions: entry.actions
      });
    }
  }

  lifted(entry, replaced) {
    if (replaced) {
      Notification.dismiss(entry.toast); // a new warning took its place
      return;
    }
    Notification.update({
      id: entry.toast,
      type: 'success',
      message: 'GPU Hub: the stop warning is lifted; your server keeps running.',
      autoClose: LIFTED_CLOSE_MS,
      actions: []
    });
  }
}

const plugin = {
  id: '@gpuhub/lab-notices:plugin',
  description: 'gpuhub cull warnings as JupyterLab notifications, with a keep-my-server button',
  autoStart: true,
  activate: app => {
    const notices = new GPUHubNotices(app.serviceManager.serverSettings);
    const poll = () => void notices.poll();
    document.addEventListener('visibilitychange', poll);
    window.setInterval(poll, POLL_MS);
    void app.restored.then(poll);
  }
};

export default plugin;
