// Dockyard's web console: Preact + htm as plain ES modules (no build step of our own), on the
// public GraphQL API only (./api.js). Routes live in the URL hash: #/containers, #/new,
// #/containers/<id>.
import { h, render } from "preact";
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import htm from "htm";
import { ApiError, gql, session, subscribe } from "./api.js";

const html = htm.bind(h);
// Set by the server when an OIDC issuer and client are configured (app/console/oidc.py).
const LOGIN_PATH = document.body.dataset.login || null;
const LOGOUT_PATH = "/console/auth/logout";

// ---------------------------------------------------------------- GraphQL documents
const VIEWER = `query Viewer { viewer { subject roles } }`;
const CONTAINERS = `query Containers($page: Int!, $rowsPerPage: Int!, $all: Boolean!,
    $search: String, $status: ContainerStatus) {
  containers(page: $page, rowsPerPage: $rowsPerPage, all: $all, search: $search, status: $status) {
    total page rowsPerPage
    items { id name image createdBy status statusReason urls gpu desiredGPUs revision dateUpdated }
  } }`;
const CONTAINER = `query Container($id: ID!) {
  container(id: $id) {
    id name createdBy image cpu ram gpu ephemeralStorage command arguments env port
    dateCreated dateUpdated status statusReason urls desiredGPUs revision readyRevision
    scaling { minInstances maxInstances concurrency scaleToZeroAfterSeconds }
    traffic { revision latest percent tag url }
    revisions { revisionNumber image dateCreated createdBy spec }
  } }`;
const STATUS = `subscription ContainerStatus($id: ID!) {
  containerStatus(id: $id) {
    id status statusReason revision readyRevision urls traffic { revision latest percent tag url }
  } }`;
const LOGS = `subscription ContainerLogs($id: ID!, $tail: Int, $follow: Boolean!) {
  containerLogs(id: $id, tail: $tail, follow: $follow) { timestamp stream revision line } }`;
const GPU_MODELS = `query GpuModels { gpuModels { items { code name } } }`;
const CREATE = `mutation CreateContainer($input: CreateContainerInput!) {
  createContainer(input: $input) { id } }`;
const UPDATE = `mutation UpdateContainer($id: ID!, $input: UpdateContainerInput!) {
  updateContainer(id: $id, input: $input) { id revision } }`;
const ROLLBACK = `mutation RollbackContainer($id: ID!, $revisionNumber: Int!) {
  rollbackContainer(id: $id, revisionNumber: $revisionNumber) { id revision } }`;
const SET_TRAFFIC = `mutation SetTraffic($id: ID!, $traffic: [TrafficTargetInput!]!) {
  setTraffic(id: $id, traffic: $traffic) { id traffic { revision latest percent tag url } } }`;
const DELETE = `mutation DeleteContainer($id: ID!) { deleteContainer(id: $id) }`;

// ---------------------------------------------------------------- routing
function parseHash() {
  const [path, query = ""] = window.location.hash.replace(/^#/, "").split("?");
  const parts = path.split("/").filter(Boolean);
  return { parts, params: new URLSearchParams(query) };
}

function useRoute() {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const onChange = () => setRoute(parseHash());
    window.addEventListener("hashchange", onChange);
    return () => window.removeEventListener("hashchange", onChange);
  }, []);
  return route;
}

const go = (hash) => {
  window.location.hash = hash;
};

/** Move keyboard and screen-reader focus to the new page's heading. */
function useFocusHeading(key) {
  const ref = useRef(null);
  useEffect(() => {
    ref.current?.focus();
  }, [key]);
  return ref;
}

// ---------------------------------------------------------------- small pieces
function StatusBadge({ status }) {
  return html`<span class=${`badge badge-${status}`} data-status=${status}>${status}</span>`;
}

function ErrorBox({ error }) {
  if (!error) return null;
  return html`<div class="error" role="alert">${error.message || String(error)}</div>`;
}

function UrlLinks({ urls }) {
  if (!urls?.length) return html`<span class="muted">—</span>`;
  return urls.map(
    (url) => html`<a class="url" href=${url.includes("://") ? url : `http://${url}`}
      target="_blank" rel="noopener">${url}</a> `
  );
}

function formatTime(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? value : date.toLocaleString();
}

function gpuText(container) {
  if (!container.gpu) return "none";
  const models = container.desiredGPUs?.length ? ` (${container.desiredGPUs.join(", ")})` : "";
  return `${container.gpu}${models}`;
}

// ---------------------------------------------------------------- sign-in
function SignIn({ onSignedIn, error: initialError }) {
  const [token, setToken] = useState("");
  const [error, setError] = useState(initialError);
  const [busy, setBusy] = useState(false);
  const heading = useFocusHeading("signin");

  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    setError(null);
    session.token = token.trim().replace(/^Bearer\s+/i, "");
    try {
      const data = await gql(VIEWER);
      onSignedIn(data.viewer);
    } catch (e) {
      session.token = null;
      setError(e);
    } finally {
      setBusy(false);
    }
  }

  return html`<main id="main" class="signin">
    <h1 tabindex="-1" ref=${heading}>Sign in to Dockyard</h1>
    ${LOGIN_PATH &&
    html`<p><a class="button primary" href=${LOGIN_PATH}>Sign in with your identity provider</a></p>
      <p class="muted">or paste a token:</p>`}
    <form onSubmit=${submit}>
      <label for="token">Access token</label>
      <textarea id="token" name="token" rows="5" required autocomplete="off" spellcheck="false"
        value=${token} onInput=${(e) => setToken(e.currentTarget.value)}
        aria-describedby="token-help"></textarea>
      <p id="token-help" class="help">A bearer token of your identity provider, or one printed by
        <code>dockyard token --sub you</code>. It is kept in this tab only.</p>
      <${ErrorBox} error=${error} />
      <button type="submit" class="primary" disabled=${busy}>Sign in</button>
    </form>
  </main>`;
}

// ---------------------------------------------------------------- containers list
function ContainerList({ viewer, params }) {
  const isAdmin = viewer.roles.includes("ADMIN");
  const page = Math.max(1, Number(params.get("page")) || 1);
  const rowsPerPage = Number(params.get("rows")) || 10;
  const all = isAdmin && params.get("all") !== "0";
  const search = params.get("q") || "";
  const statusFilter = params.get("status") || "";
  const [data, setData] = useState(null);
  const [live, setLive] = useState({});
  const [error, setError] = useState(null);
  const [typed, setTyped] = useState(search);
  const heading = useFocusHeading("list");

  const navigate = (changes) => {
    const next = new URLSearchParams(params);
    for (const [key, value] of Object.entries(changes)) {
      if (value === "" || value == null) next.delete(key);
      else next.set(key, String(value));
    }
    go(`#/containers?${next}`);
  };

  // The filter is the API's (name search, status), applied before paging; typing settles first.
  useEffect(() => {
    if (typed.trim() === search) return undefined;
    const timer = setTimeout(() => navigate({ q: typed.trim(), page: 1 }), 300);
    return () => clearTimeout(timer);
  }, [typed]);

  useEffect(() => {
    let cancelled = false;
    setError(null);
    const variables = { page, rowsPerPage, all, search: search || null, status: statusFilter || null };
    gql(CONTAINERS, variables)
      .then((result) => !cancelled && setData(result.containers))
      .catch((e) => !cancelled && setError(e));
    return () => {
      cancelled = true;
    };
  }, [page, rowsPerPage, all, search, statusFilter]);

  // Live status of every row shown: one subscription each, multiplexed on one WebSocket.
  const ids = (data?.items || []).map((item) => item.id).join(",");
  useEffect(() => {
    if (!ids) return undefined;
    const stops = ids.split(",").map((id) =>
      subscribe(STATUS, { id }, {
        next: (result) => setLive((prev) => ({ ...prev, [id]: result.containerStatus })),
        error: () => {},
      })
    );
    return () => stops.forEach((stop) => stop());
  }, [ids]);

  const shown = (data?.items || []).map((item) => ({ ...item, ...(live[item.id] || {}) }));
  const pages = data ? Math.max(1, Math.ceil(data.total / data.rowsPerPage)) : 1;

  return html`<main id="main">
    <div class="title-row">
      <h1 tabindex="-1" ref=${heading}>Containers</h1>
      <a class="button primary" href="#/new">Deploy a container</a>
    </div>
    <div class="toolbar" role="search">
      <label>Filter <input type="search" value=${typed} placeholder="part of the name"
        onInput=${(e) => setTyped(e.currentTarget.value)} /></label>
      <label>Status <select value=${statusFilter}
        onChange=${(e) => navigate({ status: e.currentTarget.value, page: 1 })}>
        <option value="">any</option><option>deploying</option><option>deployed</option>
        <option>failed</option></select></label>
      ${isAdmin &&
      html`<label class="check"><input type="checkbox" checked=${all}
        onChange=${(e) => navigate({ all: e.currentTarget.checked ? 1 : 0, page: 1 })} />
        Every user's containers</label>`}
    </div>
    <${ErrorBox} error=${error} />
    ${!data && !error && html`<p class="muted">Loading…</p>`}
    ${data &&
    html`<table class="containers">
      <caption class="sr-only">Containers, page ${data.page} of ${pages}</caption>
      <thead><tr><th scope="col">Name</th><th scope="col">Status</th><th scope="col">URL</th>
        <th scope="col">GPU</th><th scope="col">Image</th>
        ${all && html`<th scope="col">Owner</th>`}<th scope="col">Updated</th></tr></thead>
      <tbody>
        ${shown.map(
          (item) => html`<tr key=${item.id} data-id=${item.id}>
          <td data-label="Name"><a href=${`#/containers/${item.id}`}>${item.name}</a></td>
          <td data-label="Status"><div><${StatusBadge} status=${item.status} />
            ${item.statusReason && html`<div class="reason">${item.statusReason}</div>`}</div></td>
          <td data-label="URL"><div><${UrlLinks} urls=${item.urls} /></div></td>
          <td data-label="GPU">${gpuText(item)}</td>
          <td data-label="Image"><code>${item.image}</code></td>
          ${all && html`<td data-label="Owner">${item.createdBy}</td>`}
          <td data-label="Updated">${formatTime(item.dateUpdated)}</td>
        </tr>`
        )}
      </tbody>
    </table>
    ${shown.length === 0 &&
    html`<p class="muted">${search || statusFilter ? "No container matches." : "No containers yet."}</p>`}
    <nav class="pager" aria-label="Pages">
      <button disabled=${page <= 1} onClick=${() => navigate({ page: page - 1 })}>Previous</button>
      <span>Page ${data.page} of ${pages} · ${data.total} containers</span>
      <button disabled=${page >= pages} onClick=${() => navigate({ page: page + 1 })}>Next</button>
      <label>Rows <select value=${rowsPerPage}
        onChange=${(e) => navigate({ rows: e.currentTarget.value, page: 1 })}>
        ${[5, 10, 25, 50].map((n) => html`<option value=${n}>${n}</option>`)}</select></label>
    </nav>`}
  </main>`;
}

// ---------------------------------------------------------------- deploy / update form
const FIELDS = [
  { name: "name", label: "Name", help: "Lower-case letters, digits and dashes." },
  { name: "image", label: "Image", help: "With an explicit tag, e.g. nginx:1.27." },
  { name: "port", label: "Port", help: "The port the container listens on, e.g. 8080." },
  { name: "cpu", label: "CPU", type: "number", step: "0.1", help: "Cores, e.g. 0.5 or 2." },
  { name: "ram", label: "Memory", help: "e.g. 512Mi or 2Gi." },
  { name: "ephemeralStorage", label: "Ephemeral storage", help: "e.g. 10Gi." },
  { name: "gpu", label: "GPUs", type: "number", step: "1", help: "How many GPUs; 0 for none." },
  { name: "command", label: "Command", multiline: true, help: "One item per line (the entrypoint); empty for the image's." },
  { name: "arguments", label: "Arguments", multiline: true, help: "One item per line." },
  { name: "env", label: "Environment", multiline: true, help: "One KEY=value per line." },
];

const SCALING = [
  { name: "minInstances", label: "Min instances", help: "0 allows scale to zero." },
  { name: "maxInstances", label: "Max instances", help: "Upper bound of instances." },
  { name: "concurrency", label: "Concurrency", help: "Target in-flight requests per instance." },
  { name: "scaleToZeroAfterSeconds", label: "Idle seconds", help: "Before dropping to min instances." },
];

function toForm(container) {
  const lines = (list) => (list || []).join("\n");
  return {
    name: container?.name ?? "",
    image: container?.image ?? "",
    port: container?.port ?? "",
    cpu: container?.cpu != null ? String(container.cpu) : "",
    ram: container?.ram ?? "",
    ephemeralStorage: container?.ephemeralStorage ?? "",
    gpu: container?.gpu != null ? String(container.gpu) : "",
    command: lines(container?.command),
    arguments: lines(container?.arguments),
    env: Object.entries(container?.env || {}).map(([k, v]) => `${k}=${v}`).join("\n"),
    desiredGPUs: container?.desiredGPUs || [],
    scaling: Object.fromEntries(
      SCALING.map((f) => [f.name, container?.scaling?.[f.name] != null ? String(container.scaling[f.name]) : ""])
    ),
  };
}

/** The form's values as API input; field errors for what cannot even be sent. */
function toInput(form) {
  const input = {};
  const errors = {};
  for (const key of ["name", "image", "port", "ram", "ephemeralStorage"]) {
    if (form[key].trim()) input[key] = form[key].trim();
  }
  if (form.cpu.trim()) {
    input.cpu = Number(form.cpu);
    if (Number.isNaN(input.cpu)) errors.cpu = ["must be a number, e.g. 0.5"];
  }
  if (form.gpu.trim()) {
    input.gpu = Number(form.gpu);
    if (!Number.isInteger(input.gpu)) errors.gpu = ["must be a whole number, e.g. 1"];
  }
  for (const key of ["command", "arguments"]) {
    const items = form[key].split("\n").map((s) => s.trim()).filter(Boolean);
    if (items.length) input[key] = items;
  }
  const env = {};
  form.env.split("\n").forEach((line, index) => {
    if (!line.trim()) return;
    const at = line.indexOf("=");
    if (at <= 0) (errors.env ||= []).push(`line ${index + 1}: write KEY=value`);
    else env[line.slice(0, at).trim()] = line.slice(at + 1);
  });
  input.env = env;
  if (form.desiredGPUs.length) input.desiredGPUs = form.desiredGPUs;
  const scaling = {};
  for (const { name } of SCALING) {
    const value = form.scaling[name].trim();
    if (!value) continue;
    scaling[name] = Number(value);
    if (!Number.isInteger(scaling[name])) (errors.scaling ||= []).push(`${name}: must be a whole number`);
  }
  if (Object.keys(scaling).length) input.scaling = scaling;
  return { input, errors };
}

/** Server field paths (e.g. `env.FOO`, `command[0]`) grouped by the form field they belong to. */
function groupFieldErrors(fields) {
  const grouped = {};
  for (const { field, message } of fields) {
    const key = String(field || "").split(/[.[]/)[0];
    const known = key === "desiredGPUs" || key === "scaling" || FIELDS.some((f) => f.name === key);
    const target = known ? key : "_";
    (grouped[target] ||= []).push(known && field !== key ? `${field}: ${message}` : message);
  }
  return grouped;
}

function GpuPicker({ value, onChange, models, errors }) {
  const [pick, setPick] = useState("");
  const available = models.filter((m) => !value.includes(m.code));
  const nameOf = (code) => models.find((m) => m.code === code)?.name || code;
  return html`<fieldset class="field" aria-describedby="desiredGPUs-help desiredGPUs-error">
    <legend>GPU models (in order of preference)</legend>
    <ol class="chips">
      ${value.map(
        (code) => html`<li key=${code}>${nameOf(code)} <code>${code}</code>
        <button type="button" class="small" aria-label=${`Remove ${nameOf(code)}`}
          onClick=${() => onChange(value.filter((c) => c !== code))}>Remove</button></li>`
      )}
    </ol>
    <div class="inline">
      <label class="sr-only" for="gpu-model">GPU model</label>
      <select id="gpu-model" value=${pick} onChange=${(e) => setPick(e.currentTarget.value)}>
        <option value="">Choose a GPU model…</option>
        ${available.map((m) => html`<option value=${m.code}>${m.name} (${m.code})</option>`)}
      </select>
      <button type="button" disabled=${!pick}
        onClick=${() => {
          onChange([...value, pick]);
          setPick("");
        }}>Add</button>
    </div>
    <p id="desiredGPUs-help" class="help">Only used when GPUs is above 0.</p>
    ${errors && html`<p id="desiredGPUs-error" class="field-error" role="alert">${errors.join("; ")}</p>`}
  </fieldset>`;
}

function ContainerForm({ container, onDone, onCancel }) {
  const updating = Boolean(container);
  const initial = useMemo(() => toForm(container), [container]);
  const [form, setForm] = useState(initial);
  const [errors, setErrors] = useState({});
  const [models, setModels] = useState([]);
  const [busy, setBusy] = useState(false);

  useEffect(() => {
    gql(GPU_MODELS)
      .then((data) => setModels(data.gpuModels.items))
      .catch((e) => setErrors((prev) => ({ ...prev, _: [`GPU models: ${e.message}`] })));
  }, []);

  async function submit(event) {
    event.preventDefault();
    const { input, errors: local } = toInput(form);
    if (Object.keys(local).length) {
      setErrors(local);
      return;
    }
    let variables;
    if (updating) {
      // Only what changed: the rest of the spec stays as it is.
      const before = toInput(initial).input;
      const changed = {};
      for (const key of new Set([...Object.keys(input), ...Object.keys(before)])) {
        if (JSON.stringify(input[key]) !== JSON.stringify(before[key])) {
          changed[key] = input[key] ?? (key === "env" || key === "scaling" ? {} : key === "desiredGPUs" ? [] : null);
        }
      }
      if (!Object.keys(changed).length) {
        setErrors({ _: ["Nothing changed."] });
        return;
      }
      variables = { id: container.id, input: changed };
    } else {
      variables = { input };
    }
    setBusy(true);
    setErrors({});
    try {
      const data = await gql(updating ? UPDATE : CREATE, variables);
      onDone(updating ? data.updateContainer : data.createContainer);
    } catch (e) {
      if (e instanceof ApiError && e.fields.length) setErrors(groupFieldErrors(e.fields));
      else setErrors({ _: [e.message] });
    } finally {
      setBusy(false);
    }
  }

  const set = (name) => (e) => setForm({ ...form, [name]: e.currentTarget.value });
  const general = errors._;
  const invalidCount = Object.keys(errors).filter((k) => k !== "_").length;

  return html`<form class="container-form" onSubmit=${submit} novalidate>
    ${(general || invalidCount > 0) &&
    html`<div class="error" role="alert">
      ${invalidCount > 0 && html`<p>Please fix the ${invalidCount === 1 ? "field" : `${invalidCount} fields`} marked below.</p>`}
      ${general && general.map((m) => html`<p>${m}</p>`)}
    </div>`}
    <div class="grid">
      ${FIELDS.map((field) => {
        const id = `field-${field.name}`;
        const fieldErrors = errors[field.name];
        const props = {
          id,
          name: field.name,
          value: form[field.name],
          onInput: set(field.name),
          "aria-invalid": fieldErrors ? "true" : undefined,
          "aria-describedby": `${id}-help${fieldErrors ? ` ${id}-error` : ""}`,
        };
        return html`<div class=${`field${field.multiline ? " wide" : ""}`}>
          <label for=${id}>${field.label}</label>
          ${field.multiline
            ? html`<textarea rows="3" spellcheck="false" ...${props}></textarea>`
            : html`<input type=${field.type || "text"} step=${field.step} ...${props} />`}
          <p id=${`${id}-help`} class="help">${field.help}</p>
          ${fieldErrors &&
          html`<p id=${`${id}-error`} class="field-error" data-field=${field.name}>${fieldErrors.join("; ")}</p>`}
        </div>`;
      })}
    </div>
    <${GpuPicker} value=${form.desiredGPUs} models=${models} errors=${errors.desiredGPUs}
      onChange=${(desiredGPUs) => setForm({ ...form, desiredGPUs })} />
    <fieldset class="field" aria-describedby=${errors.scaling ? "scaling-error" : undefined}>
      <legend>Scaling</legend>
      <div class="grid">
        ${SCALING.map(
          (f) => html`<div class="field">
            <label for=${`scaling-${f.name}`}>${f.label}</label>
            <input id=${`scaling-${f.name}`} type="number" step="1" min="0" value=${form.scaling[f.name]}
              aria-describedby=${`scaling-${f.name}-help`}
              onInput=${(e) => setForm({ ...form, scaling: { ...form.scaling, [f.name]: e.currentTarget.value } })} />
            <p id=${`scaling-${f.name}-help`} class="help">${f.help}</p>
          </div>`
        )}
      </div>
      ${errors.scaling && html`<p id="scaling-error" class="field-error" data-field="scaling">${errors.scaling.join("; ")}</p>`}
    </fieldset>
    <div class="actions">
      <button type="submit" class="primary" disabled=${busy}>${updating ? "Deploy new revision" : "Deploy"}</button>
      ${onCancel && html`<button type="button" onClick=${onCancel}>Cancel</button>`}
    </div>
  </form>`;
}

function NewContainer() {
  const heading = useFocusHeading("new");
  return html`<main id="main">
    <h1 tabindex="-1" ref=${heading}>Deploy a container</h1>
    <${ContainerForm} onDone=${(created) => go(`#/containers/${created.id}`)}
      onCancel=${() => go("#/containers")} />
  </main>`;
}

// ---------------------------------------------------------------- revisions and their diff
function specDiff(a, b) {
  const keys = [...new Set([...Object.keys(a || {}), ...Object.keys(b || {})])].sort();
  return keys
    .map((key) => ({ key, before: JSON.stringify(a?.[key] ?? null), after: JSON.stringify(b?.[key] ?? null) }))
    .filter((row) => row.before !== row.after);
}

function Revisions({ container, onRollback }) {
  const revisions = container.revisions || [];
  const [left, setLeft] = useState(revisions[1]?.revisionNumber ?? revisions[0]?.revisionNumber);
  const [right, setRight] = useState(revisions[0]?.revisionNumber);
  const [busy, setBusy] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    // A new revision arrived: compare it with the one before.
    setLeft(revisions[1]?.revisionNumber ?? revisions[0]?.revisionNumber);
    setRight(revisions[0]?.revisionNumber);
  }, [revisions.length]);

  const byNumber = (n) => revisions.find((r) => r.revisionNumber === Number(n));
  const diff = specDiff(byNumber(left)?.spec, byNumber(right)?.spec);

  async function rollback(revisionNumber) {
    setBusy(revisionNumber);
    setError(null);
    try {
      await gql(ROLLBACK, { id: container.id, revisionNumber });
      onRollback();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(null);
    }
  }

  return html`<section aria-labelledby="revisions-heading">
    <h2 id="revisions-heading">Revisions</h2>
    <${ErrorBox} error=${error} />
    <table class="revisions">
      <thead><tr><th scope="col">#</th><th scope="col">Image</th><th scope="col">Created</th>
        <th scope="col">By</th><th scope="col">Compare</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
      <tbody>
        ${revisions.map(
          (r) => html`<tr key=${r.revisionNumber} data-revision=${r.revisionNumber}>
          <td data-label="#"><span>${r.revisionNumber}${r.revisionNumber === container.readyRevision ? html` <span class="tag">serving</span>` : ""}</span></td>
          <td data-label="Image"><code>${r.image}</code></td>
          <td data-label="Created">${formatTime(r.dateCreated)}</td>
          <td data-label="By">${r.createdBy}</td>
          <td data-label="Compare" class="compare"><div>
            <label><input type="radio" name="diff-left" checked=${left === r.revisionNumber}
              onChange=${() => setLeft(r.revisionNumber)} /> from</label>
            <label><input type="radio" name="diff-right" checked=${right === r.revisionNumber}
              onChange=${() => setRight(r.revisionNumber)} /> to</label>
          </div></td>
          <td>${r.revisionNumber !== container.revision &&
          html`<button type="button" disabled=${busy !== null}
            onClick=${() => rollback(r.revisionNumber)}>Roll back to ${r.revisionNumber}</button>`}</td>
        </tr>`
        )}
      </tbody>
    </table>
    <h3>Changes from revision ${left} to ${right}</h3>
    ${diff.length === 0
      ? html`<p class="muted">No differences.</p>`
      : html`<table class="diff" aria-label=${`Changes from revision ${left} to ${right}`}>
        <thead><tr><th scope="col">Field</th><th scope="col">Revision ${left}</th><th scope="col">Revision ${right}</th></tr></thead>
        <tbody>${diff.map(
          (row) => html`<tr key=${row.key}><th scope="row">${row.key}</th>
            <td class="removed"><code>${row.before}</code></td><td class="added"><code>${row.after}</code></td></tr>`
        )}</tbody></table>`}
  </section>`;
}

// ---------------------------------------------------------------- traffic
function Traffic({ container, onSaved }) {
  const fromContainer = () =>
    (container.traffic || []).map((t) => ({
      target: t.latest ? "latest" : String(t.revision),
      percent: String(t.percent),
      tag: t.tag || "",
    }));
  const [rows, setRows] = useState(fromContainer);
  const [editing, setEditing] = useState(false);
  const [error, setError] = useState(null);
  const [fieldErrors, setFieldErrors] = useState({});

  async function save(event) {
    event.preventDefault();
    setError(null);
    setFieldErrors({});
    const traffic = rows.map((row) => {
      const entry = row.target === "latest" ? { latest: true } : { revision: Number(row.target) };
      entry.percent = Number(row.percent);
      if (row.tag.trim()) entry.tag = row.tag.trim();
      return entry;
    });
    try {
      await gql(SET_TRAFFIC, { id: container.id, traffic });
      setEditing(false);
      onSaved();
    } catch (e) {
      setError(e);
      const grouped = {};
      for (const { field, message } of e.fields || []) {
        const match = /^traffic\[(\d+)\]/.exec(field);
        const key = match ? match[1] : "_";
        (grouped[key] ||= []).push(`${field}: ${message}`);
      }
      setFieldErrors(grouped);
    }
  }

  const set = (index, key) => (e) =>
    setRows(rows.map((row, i) => (i === index ? { ...row, [key]: e.currentTarget.value } : row)));

  return html`<section aria-labelledby="traffic-heading">
    <h2 id="traffic-heading">Traffic</h2>
    <table class="traffic">
      <thead><tr><th scope="col">Target</th><th scope="col">Percent</th><th scope="col">Tag</th><th scope="col">Tag URL</th></tr></thead>
      <tbody>${(container.traffic || []).map(
        (t, i) => html`<tr key=${i}>
          <td data-label="Target">${t.latest ? `latest (revision ${t.revision ?? "none yet"})` : `revision ${t.revision}`}</td>
          <td data-label="Percent">${t.percent} %</td>
          <td data-label="Tag">${t.tag || "—"}</td>
          <td data-label="Tag URL">${t.url ? html`<${UrlLinks} urls=${[t.url]} />` : "—"}</td>
        </tr>`
      )}</tbody>
    </table>
    ${!editing &&
    html`<p><button type="button" onClick=${() => {
      setRows(fromContainer());
      setEditing(true);
    }}>Change traffic</button></p>`}
    ${editing &&
    html`<form class="traffic-form" onSubmit=${save}>
      ${error && !Object.keys(fieldErrors).some((k) => k !== "_") && html`<${ErrorBox} error=${error} />`}
      ${fieldErrors._ && html`<p class="field-error" role="alert">${fieldErrors._.join("; ")}</p>`}
      ${rows.map(
        (row, i) => html`<fieldset class="traffic-row" key=${i}>
          <legend>Target ${i + 1}</legend>
          <label>Serve <select value=${row.target} onChange=${set(i, "target")}>
            <option value="latest">the latest ready revision</option>
            ${(container.revisions || []).map((r) => html`<option value=${String(r.revisionNumber)}>revision ${r.revisionNumber}</option>`)}
          </select></label>
          <label>Percent <input type="number" min="0" max="100" step="1" value=${row.percent} onInput=${set(i, "percent")} /></label>
          <label>Tag <input value=${row.tag} onInput=${set(i, "tag")} placeholder="optional, e.g. preview" /></label>
          <button type="button" class="small" onClick=${() => setRows(rows.filter((_, j) => j !== i))}>Remove target ${i + 1}</button>
          ${fieldErrors[i] && html`<p class="field-error" role="alert" data-field=${`traffic-${i}`}>${fieldErrors[i].join("; ")}</p>`}
        </fieldset>`
      )}
      <div class="actions">
        <button type="button" onClick=${() => setRows([...rows, { target: "latest", percent: "0", tag: "" }])}>Add target</button>
        <button type="submit" class="primary">Save traffic</button>
        <button type="button" onClick=${() => setEditing(false)}>Cancel</button>
      </div>
    </form>`}
  </section>`;
}

// ---------------------------------------------------------------- live logs
const MAX_LINES = 5000;

function Logs({ id }) {
  const [tail, setTail] = useState(100);
  const [follow, setFollow] = useState(true);
  const [paused, setPaused] = useState(false);
  const [search, setSearch] = useState("");
  const [lines, setLines] = useState([]);
  const [waiting, setWaiting] = useState(0);
  const [state, setState] = useState("connecting");
  const [error, setError] = useState(null);
  const [generation, setGeneration] = useState(0);
  const pausedRef = useRef(false);
  const pending = useRef([]);
  const view = useRef(null);

  useEffect(() => {
    setLines([]);
    pending.current = [];
    setWaiting(0);
    setError(null);
    setState("streaming");
    const append = (batch) => setLines((prev) => [...prev, ...batch].slice(-MAX_LINES));
    return subscribe(LOGS, { id, tail: Number(tail) || 0, follow }, {
      next: (data) => {
        if (pausedRef.current) {
          pending.current.push(data.containerLogs);
          setWaiting(pending.current.length);
        } else {
          append([data.containerLogs]);
        }
      },
      error: (e) => {
        setError(e);
        setState("stopped");
      },
      complete: () => setState("ended"),
    });
  }, [id, tail, follow, generation]);

  function togglePause() {
    pausedRef.current = !paused;
    if (paused && pending.current.length) {
      const batch = pending.current;
      pending.current = [];
      setWaiting(0);
      setLines((prev) => [...prev, ...batch].slice(-MAX_LINES));
    }
    setPaused(!paused);
  }

  const needle = search.trim().toLowerCase();
  const shown = needle ? lines.filter((l) => l.line.toLowerCase().includes(needle)) : lines;

  useEffect(() => {
    if (!paused && view.current) view.current.scrollTop = view.current.scrollHeight;
  }, [shown.length, paused]);

  return html`<section aria-labelledby="logs-heading">
    <h2 id="logs-heading">Logs</h2>
    <div class="toolbar">
      <label>Tail <select value=${tail} onChange=${(e) => setTail(Number(e.currentTarget.value))}>
        ${[10, 100, 500, 1000].map((n) => html`<option value=${n}>${n}</option>`)}</select></label>
      <label class="check"><input type="checkbox" checked=${follow}
        onChange=${(e) => setFollow(e.currentTarget.checked)} /> Follow</label>
      <button type="button" aria-pressed=${paused} onClick=${togglePause}>${paused ? "Resume" : "Pause"}</button>
      <button type="button" onClick=${() => setGeneration(generation + 1)}>Reload</button>
      <label>Search <input type="search" value=${search}
        onInput=${(e) => setSearch(e.currentTarget.value)} placeholder="in received lines" /></label>
    </div>
    <p class="muted log-status" aria-live="polite">
      ${needle ? `${shown.length} of ${lines.length} lines match` : `${lines.length} lines`}
      ${paused ? ` · paused, ${waiting} new lines waiting` : ""}
      ${state === "ended" ? " · stream ended" : ""}
    </p>
    <${ErrorBox} error=${error} />
    <div class="log" role="log" aria-label="Container output" tabindex="0" ref=${view}>
      ${shown.map(
        (l, i) => html`<div key=${i} class=${`line ${l.stream}`}><span class="ts">${l.timestamp.slice(11, 23)}</span> <span class="rev">r${l.revision ?? "?"}</span> ${l.line}</div>`
      )}
    </div>
  </section>`;
}

// ---------------------------------------------------------------- one container
function ContainerPage({ id }) {
  const [container, setContainer] = useState(null);
  const [error, setError] = useState(null);
  const [editing, setEditing] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const [deleteError, setDeleteError] = useState(null);
  const heading = useFocusHeading(container ? `c-${id}` : "loading");

  const load = useCallback(() => {
    gql(CONTAINER, { id })
      .then((data) => setContainer(data.container))
      .catch((e) => setError(e));
  }, [id]);

  useEffect(load, [load]);

  useEffect(
    () =>
      subscribe(STATUS, { id }, {
        next: (data) => {
          const status = data.containerStatus;
          setContainer((prev) => {
            if (!prev) return prev;
            if (status.revision !== prev.revision) load(); // a new revision: fetch its spec
            return { ...prev, ...status };
          });
        },
        error: (e) => setError(e),
      }),
    [id, load]
  );

  async function remove() {
    setDeleteError(null);
    try {
      await gql(DELETE, { id });
      go("#/containers");
    } catch (e) {
      setDeleteError(e);
    }
  }

  if (!container) {
    return html`<main id="main"><h1 tabindex="-1" ref=${heading}>Container</h1>
      ${error ? html`<${ErrorBox} error=${error} />` : html`<p class="muted">Loading…</p>`}</main>`;
  }
  const details = [
    ["Image", html`<code>${container.image}</code>`],
    ["Port", container.port],
    ["CPU", container.cpu],
    ["Memory", container.ram],
    ["Ephemeral storage", container.ephemeralStorage],
    ["GPU", gpuText(container)],
    ["Command", container.command ? html`<code>${JSON.stringify(container.command)}</code>` : "image default"],
    ["Arguments", container.arguments ? html`<code>${JSON.stringify(container.arguments)}</code>` : "image default"],
    ["Environment", html`<code>${JSON.stringify(container.env)}</code>`],
    ["Owner", container.createdBy],
    ["Created", formatTime(container.dateCreated)],
    ["Updated", formatTime(container.dateUpdated)],
    ["Revision", `${container.revision} (serving: ${container.readyRevision ?? "none"})`],
    [
      "Scaling",
      container.scaling
        ? `${container.scaling.minInstances}–${container.scaling.maxInstances} instances, ` +
          `${container.scaling.concurrency} requests each, idle after ${container.scaling.scaleToZeroAfterSeconds} s`
        : "—",
    ],
    ["ID", html`<code>${container.id}</code>`],
  ];

  return html`<main id="main">
    <p><a href="#/containers">← Containers</a></p>
    <div class="title-row">
      <h1 tabindex="-1" ref=${heading}>${container.name}</h1>
      <div class="actions">
        <button type="button" onClick=${() => setEditing(!editing)} aria-expanded=${editing}>Edit</button>
        <button type="button" class="danger" onClick=${() => setConfirming(true)}>Delete</button>
      </div>
    </div>
    ${confirming &&
    html`<div class="confirm" role="alertdialog" aria-labelledby="confirm-text">
      <p id="confirm-text">Delete <strong>${container.name}</strong> and stop all its revisions? This cannot be undone.</p>
      <${ErrorBox} error=${deleteError} />
      <button type="button" class="danger" onClick=${remove}
        ref=${(el) => el && el.focus()}>Yes, delete ${container.name}</button>
      <button type="button" onClick=${() => setConfirming(false)}>Cancel</button>
    </div>`}
    <section class="status-box" aria-live="polite">
      <${StatusBadge} status=${container.status} />
      ${container.statusReason && html`<p class="reason" data-testid="status-reason">${container.statusReason}</p>`}
      <p><${UrlLinks} urls=${container.urls} /></p>
    </section>
    <${ErrorBox} error=${error} />
    ${editing &&
    html`<section aria-labelledby="edit-heading"><h2 id="edit-heading">Edit (deploys a new revision)</h2>
      <${ContainerForm} container=${container} onCancel=${() => setEditing(false)}
        onDone=${() => {
          setEditing(false);
          load();
        }} /></section>`}
    <section aria-labelledby="details-heading">
      <h2 id="details-heading">Spec</h2>
      <dl class="details">${details.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
    </section>
    <${Revisions} container=${container} onRollback=${load} />
    <${Traffic} container=${container} onSaved=${load} />
    <${Logs} id=${id} />
  </main>`;
}

// ---------------------------------------------------------------- the shell
function App() {
  const route = useRoute();
  const [viewer, setViewer] = useState(null);
  // With an OIDC sign-in, the session may be an HttpOnly cookie this page cannot see: ask.
  const [checking, setChecking] = useState(Boolean(session.token || LOGIN_PATH));
  const [signInError, setSignInError] = useState(null);

  useEffect(() => {
    if (!checking) return;
    const hadToken = Boolean(session.token);
    gql(VIEWER)
      .then((data) => setViewer(data.viewer))
      .catch((e) => {
        session.token = null;
        if (hadToken || e.code !== "UNAUTHENTICATED") setSignInError(e);
      })
      .finally(() => setChecking(false));
  }, []);

  async function signOut() {
    session.token = null;
    if (LOGIN_PATH) await fetch(LOGOUT_PATH, { method: "POST", credentials: "same-origin" });
    setViewer(null);
  }

  let page;
  if (checking) page = html`<main id="main"><p class="muted">Loading…</p></main>`;
  else if (!viewer) page = html`<${SignIn} error=${signInError} onSignedIn=${setViewer} />`;
  else if (route.parts[0] === "new") page = html`<${NewContainer} />`;
  else if (route.parts[0] === "containers" && route.parts[1])
    page = html`<${ContainerPage} key=${route.parts[1]} id=${route.parts[1]} />`;
  else page = html`<${ContainerList} viewer=${viewer} params=${route.params} />`;

  return html`<a class="skip" href="#main" onClick=${(e) => {
      e.preventDefault();
      document.getElementById("main")?.querySelector("h1")?.focus();
    }}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/containers">Dockyard</a>
      <nav aria-label="Main">
        ${viewer && html`<a href="#/containers">Containers</a><a href="#/new">Deploy</a>`}
        <a href="/graphql">GraphiQL</a><a href="/docs">REST API</a>
      </nav>
      ${viewer &&
      html`<div class="who"><span>${viewer.subject}${viewer.roles.length ? ` (${viewer.roles.join(", ")})` : ""}</span>
        <button type="button" class="small" onClick=${signOut}>Sign out</button></div>`}
    </header>
    ${page}`;
}

const root = document.getElementById("app");
root.textContent = ""; // the "Loading" text, for browsers that never run this
render(html`<${App} />`, root);
