// Swagger UI on Dockyard's own OpenAPI document (rest/openapi.json), from local assets only.
(function () {
  "use strict";
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null, // never ask validator.swagger.io: nothing leaves the machine
  });
})();
