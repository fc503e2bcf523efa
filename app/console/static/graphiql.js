// GraphiQL on Dockyard's /graphql. Subscriptions go over graphql-transport-ws and take the
// headers typed in the Headers editor as the connection_init payload (that is where Dockyard reads
// the token of a WebSocket), so one {"Authorization": "Bearer …"} works for every operation.
(function () {
  "use strict";
  var url = window.location.origin + "/graphql";
  var subscriptionUrl = url.replace(/^http/, "ws");
  var example = [
    "# Dockyard's GraphQL API. Put your token under Headers:",
    '#   {"Authorization": "Bearer <token>"}',
    "# and run with Ctrl-Enter. Subscriptions (containerStatus, containerLogs) work too.",
    "",
    "query Viewer {",
    "  viewer { subject roles }",
    "}",
    "",
  ].join("\n");
  var headers = {};
  try {
    var token = window.sessionStorage.getItem("dockyard.token");
    if (token) headers = { Authorization: "Bearer " + token };
  } catch (e) { /* storage may be disabled */ }

  function fetcher(params, options) {
    var given = (options && options.headers) || {};
    return GraphiQL.createFetcher({
      url: url,
      subscriptionUrl: subscriptionUrl,
      wsConnectionParams: given,
    })(params, options);
  }

  // /graphql#query=… opens with that document. (Not ?query=: that runs it as a GET request.)
  var shared = new URLSearchParams(window.location.hash.slice(1)).get("query");

  var root = ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: example,
      query: shared || undefined,
      defaultHeaders: Object.keys(headers).length ? JSON.stringify(headers, null, 2) : undefined,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
    })
  );
})();
