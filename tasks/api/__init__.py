"""The HTTP API for other services (Procfile `api`): FastAPI app, routes, tokens.

`app` builds the application, `routes` the endpoints, `service` what they do (Redis
and tasks sent by name only), `uploads` the streamed multipart parser, `tokens` the
per-client bearer tokens (also used by `submit.py tokens`), `schemas` the bodies.
"""
