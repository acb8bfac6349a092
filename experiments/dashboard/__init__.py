"""Live labml dashboard for the experiments: ``python -m experiments.dashboard``.

The real labml app (the ``labml-app`` package: its API and page) on an embedded
file store (labml-db's file drivers) instead of MongoDB, with its CDN assets
served locally, runs listed without a manual claim, and default charts of the
10/50/90 % quantiles of the uncertainty distributions.

* :mod:`.__main__`: command line (``--host``, ``--port``, ``--data``, ``--mongo``, ``--token``)
* :mod:`.server`: the FastAPI app assembled from labml-app's handlers
* :mod:`.security`: web pages kept out (``Host``, ``Origin``, JSON-only writes), read timeout, connection cap
* :mod:`.guard`: token, body limit, malformed requests, unknown records, reads that never write
* :mod:`.track`: the run-update endpoint (checks, series bound, re-sent points, throttle)
* :mod:`.storage`: file store / MongoDB set-up
* :mod:`.charts`: default chart cards (quantile spreads, accuracy, losses)
* :mod:`.client`: :func:`~.client.attach`, used by training runs to report here
* :mod:`.vendor`: the vendored d3 / bootstrap / font-awesome files (``static/``)
"""
