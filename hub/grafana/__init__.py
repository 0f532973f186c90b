"""Grafana boards as code: dashboards, provisioning files, alert rules and their upload.

- ``queries``: the PromQL every board and alert rule runs, recorded as :class:`~hub.grafana.queries.PanelQuery`
  so a test can run each one against a real VictoriaMetrics;
- ``boards``: the four dashboards, built with grafana-foundation-sdk;
- ``provisioning``: Grafana's provisioning files (datasources, dashboard provider, alert rules);
- ``files``: renders everything into ``grafana/`` and checks the committed copy for drift;
- ``push``: uploads folder, datasources and dashboards through grafana-client, idempotently.

Metric names and labels come from docs/metrics.md only.
"""
