// Swagger UI over this server's OpenAPI document. Nothing is fetched from another origin:
// validatorUrl null turns off the online validator badge.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/api/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    tryItOutEnabled: false,
  });
});
