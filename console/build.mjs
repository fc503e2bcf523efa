// Copies the browser files Dockyard serves from the installed npm packages (pinned by
// package-lock.json) into app/console/dist/vendor, which `dockyard serve` serves and git ignores.
// No bundler: the console is plain ES modules (Preact + htm) resolved by an import map, and the
// explorers use their packages' prebuilt browser bundles.
import { cpSync, mkdirSync, rmSync, readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const modules = join(here, "node_modules");
const out = join(here, "..", "app", "console", "dist", "vendor");

const files = {
  "react/umd/react.production.min.js": "react.production.min.js",
  "react-dom/umd/react-dom.production.min.js": "react-dom.production.min.js",
  "graphiql/graphiql.min.js": "graphiql.min.js",
  "graphiql/graphiql.min.css": "graphiql.min.css",
  "swagger-ui-dist/swagger-ui-bundle.js": "swagger-ui-bundle.js",
  "swagger-ui-dist/swagger-ui.css": "swagger-ui.css",
  "preact/dist/preact.module.js": "preact.module.js",
  "preact/hooks/dist/hooks.module.js": "hooks.module.js",
  "htm/dist/htm.module.js": "htm.module.js",
};

rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, "graphql-ws"), { recursive: true });
for (const [from, to] of Object.entries(files)) {
  cpSync(join(modules, from), join(out, to));
}
// graphql-ws's ES build: the client module and the shared chunk it imports (hashed name).
const wsDist = join(modules, "graphql-ws", "dist");
for (const name of readdirSync(wsDist)) {
  if (name === "client.js" || /^common-.*\.js$/.test(name)) {
    cpSync(join(wsDist, name), join(out, "graphql-ws", name));
  }
}
console.log(`console assets copied to ${out}`);
