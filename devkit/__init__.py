"""What the tests and the benchmarks both start and use, outside the service.

The process harness (`devkit.harness`: a Redis of its own, Procfile processes,
`eventually()`), the local RabbitMQ's vhosts (`devkit.rabbitmq`), the fake engines and
their wiring, generated images and PDFs, the simulated servers (inference, OTLP,
S3, a callback receiver), Redis that fails over and a RabbitMQ cluster, the CER, and
the tiny offline VLM. tests/ and bench/ import it; it imports neither, and the image
does not ship it (.dockerignore lists what the image copies).
"""
