// /api/docs: Swagger UI, served from this process (app/pages/vendor/swagger-ui), on the
// OpenAPI document. A file of its own because the page's Content-Security-Policy allows no
// inline script; nothing here or in Swagger UI's configuration reaches another origin.

const root = document.getElementById("swagger-ui");

window.SwaggerUIBundle({
  url: root.dataset.openapi,
  domNode: root,
  deepLinking: true,
  // The default asks an online validator for a badge: nothing may leave for another origin.
  validatorUrl: null,
  presets: [window.SwaggerUIBundle.presets.apis],
  layout: "BaseLayout",
  // A token typed into "Authorize" is kept by this tab only, never in storage.
  persistAuthorization: false,
});
