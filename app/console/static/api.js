// The console's only way to the server: Dockyard's public GraphQL API, over HTTP for queries
// and mutations and over graphql-transport-ws (the graphql-ws library) for subscriptions.
import { createClient } from "graphql-ws";

const TOKEN_KEY = "dockyard.token";

export const session = {
  get token() {
    return window.sessionStorage.getItem(TOKEN_KEY);
  },
  set token(value) {
    if (value) window.sessionStorage.setItem(TOKEN_KEY, value);
    else window.sessionStorage.removeItem(TOKEN_KEY);
    resetSocket();
  },
};

/** A failed operation: the GraphQL errors, their extensions.code and the invalid fields. */
export class ApiError extends Error {
  constructor(errors) {
    super(errors.map((e) => e.message).join("; ") || "request failed");
    this.errors = errors;
    this.code = errors[0]?.extensions?.code;
    this.fields = errors.flatMap((e) => e.extensions?.fields || []);
  }
}

function headers() {
  const result = { "Content-Type": "application/json", Accept: "application/json" };
  if (session.token) result.Authorization = `Bearer ${session.token}`;
  return result;
}

export async function gql(query, variables = {}) {
  let response;
  try {
    response = await fetch("/graphql", {
      method: "POST",
      headers: headers(),
      credentials: "same-origin",
      body: JSON.stringify({ query, variables }),
    });
  } catch (e) {
    throw new ApiError([{ message: `cannot reach the server (${e.message})` }]);
  }
  let body;
  try {
    body = await response.json();
  } catch {
    throw new ApiError([{ message: `the server answered HTTP ${response.status}` }]);
  }
  if (body.errors?.length) throw new ApiError(body.errors);
  return body.data;
}

let client = null;

function socket() {
  if (!client) {
    client = createClient({
      url: window.location.origin.replace(/^http/, "ws") + "/graphql",
      connectionParams: () => (session.token ? { Authorization: `Bearer ${session.token}` } : {}),
      retryAttempts: 30,
      shouldRetry: (event) => !(event && event.code === 4403),
    });
  }
  return client;
}

function resetSocket() {
  if (client) client.dispose();
  client = null;
}

/** Subscribe; returns the function that unsubscribes. */
export function subscribe(query, variables, { next, error, complete }) {
  return socket().subscribe(
    { query, variables },
    {
      next: (result) => {
        if (result.errors?.length) error?.(new ApiError(result.errors));
        else next(result.data);
      },
      error: (e) => {
        if (Array.isArray(e)) error?.(new ApiError(e));
        else error?.(new ApiError([{ message: e?.reason || e?.message || "the live connection closed" }]));
      },
      complete: () => complete?.(),
    }
  );
}
