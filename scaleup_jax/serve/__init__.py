"""SCALE-UP as a firewall in front of a deployed model (paper Sec. 1, 2.2; issue #20).

An HTTP service (FastAPI + uvicorn) that classifies uploaded images and flags
or blocks the ones the calibrated SCALE-UP detector rejects, records every
flagged input in a durable store for trace-back, and shows them to an operator
on a review page.

Modules:
  engine    the model and its detector, compiled per bucket size at start-up
  batcher   dynamic batching into the compiled detector
  firewall  score -> calibrated decision -> store, per batch
  decode    request bodies -> checked images, or one 4xx naming the problem
  store     SQLite (WAL) store of flagged inputs with retention
  review    the review page (HTML)
  metrics   Prometheus text metrics
  app       the FastAPI app factory, the operator token, the embedded server
  ray_app   the same app on Ray Serve replicas (optional extra ``ray``)
  loadgen   the bounded load generator and the load test of docs/serving.md
  testing   a tiny random model served the same way (tests, demos)

Start it with ``python -m eval.serve`` (docs/serving.md).
"""
