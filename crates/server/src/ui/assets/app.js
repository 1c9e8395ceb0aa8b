// The dashboard's only script: asks for a token once, keeps it in this
// tab's sessionStorage, loads the page's fragment with it, and turns the
// fragment's buttons into calls to the public API. Fragments come escaped
// from the server; this script never builds HTML from data.
'use strict';

(() => {
  const KEY = 'edgecache.token';
  const body = document.body;
  const main = document.getElementById('main');
  const flash = document.getElementById('flash');
  const login = document.getElementById('login');
  const tokenInput = document.getElementById('token');
  const logout = document.getElementById('logout');

  function headers(extra) {
    const all = Object.assign({}, extra);
    const token = sessionStorage.getItem(KEY);
    if (token) all.Authorization = 'Bearer ' + token;
    return all;
  }

  // The API's own words: `message (field) [code]`.
  async function apiError(response) {
    try {
      const answer = await response.json();
      if (answer && answer.error) {
        const field = answer.error.field ? ' (' + answer.error.field + ')' : '';
        return answer.error.message + field + ' [' + answer.error.code + ']';
      }
    } catch (_) { /* not JSON */ }
    return response.status + ' ' + response.statusText;
  }

  function show(message, kind) {
    flash.textContent = message;
    flash.className = kind || '';
  }

  function askForToken(message) {
    sessionStorage.removeItem(KEY);
    main.replaceChildren();
    logout.hidden = true;
    login.hidden = false;
    if (message) show(message, 'error');
    tokenInput.focus();
  }

  async function load() {
    const response = await fetch(body.dataset.part + location.search, { headers: headers() });
    if (response.status === 401) {
      askForToken(sessionStorage.getItem(KEY) ? await apiError(response) : '');
      return false;
    }
    if (!response.ok) {
      show(await apiError(response), 'error');
      return false;
    }
    main.innerHTML = await response.text();
    login.hidden = true;
    logout.hidden = !sessionStorage.getItem(KEY);
    return true;
  }

  async function call(method, path, payload) {
    const init = { method, headers: headers(payload === undefined ? {} : { 'Content-Type': 'application/json' }) };
    if (payload !== undefined) init.body = JSON.stringify(payload);
    const response = await fetch(path, init);
    if (!response.ok) throw new Error(await apiError(response));
    return response;
  }

  // Reloads until no version is pending or downloading (about a minute at most).
  async function untilSettled() {
    for (let round = 0; round < 60; round++) {
      if (!(await load())) return;
      if (!main.querySelector('li.version[data-status="pending"], li.version[data-status="downloading"]')) return;
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  const actions = {
    async fetch(resource) {
      await call('POST', resource + '/fetch');
      show('Fetch started.', 'ok');
      await untilSettled();
    },
    async pin(resource, version, item) {
      const seconds = item.querySelector('select.pin-for').value;
      await call('PUT', version + '/pin', seconds ? { duration_seconds: Number(seconds) } : {});
      show('Pinned.', 'ok');
    },
    async unpin(resource, version) {
      await call('DELETE', version + '/pin');
      show('Unpinned.', 'ok');
    },
    async tag(resource, version, item) {
      const name = item.querySelector('input.tag-name').value.trim();
      await call('PUT', version + '/tags/' + encodeURIComponent(name));
      show('Tagged ' + name + '.', 'ok');
    },
    async untag(resource, version, item, button) {
      await call('DELETE', version + '/tags/' + encodeURIComponent(button.dataset.tag));
      show('Tag removed.', 'ok');
    },
    async delete() {
      document.getElementById('confirm-delete').hidden = false;
      return 'stay';
    },
    async 'cancel-delete'() {
      document.getElementById('confirm-delete').hidden = true;
      return 'stay';
    },
    async 'confirm-delete'(resource) {
      const force = document.getElementById('force-delete').checked;
      await call('DELETE', resource + (force ? '?force=true' : ''));
      show('Deleted.', 'ok');
      location.assign('/ui');
      return 'stay';
    },
  };

  main.addEventListener('click', async (event) => {
    const button = event.target.closest('button[data-action]');
    const section = document.getElementById('resource');
    if (!button || !section) return;
    const resource = '/v1/resources/' + encodeURIComponent(section.dataset.rid);
    const item = button.closest('li.version');
    const version = item ? resource + '/versions/' + encodeURIComponent(item.dataset.version) : null;
    button.disabled = true;
    try {
      const next = await actions[button.dataset.action](resource, version, item, button);
      if (next !== 'stay') await load();
    } catch (error) {
      show(error.message, 'error');
    } finally {
      button.disabled = false;
    }
  });

  login.addEventListener('submit', async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, tokenInput.value.trim());
    tokenInput.value = '';
    show('');
    await load();
  });

  logout.addEventListener('click', () => askForToken(''));

  load().catch((error) => show(error.message, 'error'));
})();
