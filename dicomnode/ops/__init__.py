"""Operating the node: questions over its SQL record, asked by ``dicomnode audit``,
``dicomnode monitor``, ``dicomnode worklist`` and Prometheus.

One job per module (nothing is re-exported, so ``dicomnode --help`` does not pay for numpy and
SQLAlchemy; import the module you need):

- :mod:`~dicomnode.ops.audit`: who sent what, what the model said, what was delivered (studies,
  summary, deliveries, events)
- :mod:`~dicomnode.ops.drift`: score drift (PSI) of each model version against its validation baseline
- :mod:`~dicomnode.ops.performance`: sensitivity, specificity, PPV and NPV against radiologists' reads
- :mod:`~dicomnode.ops.monitor`: drift and performance of every model version for one window
- :mod:`~dicomnode.ops.groundtruth`: importing radiologists' reads from CSV
- :mod:`~dicomnode.ops.report`: the monitoring report (Markdown and HTML with SVG plots)
- :mod:`~dicomnode.ops.metrics`: Prometheus ``/metrics`` read from SQL at scrape time
- :mod:`~dicomnode.ops.tables`: typed rows printed as a table, CSV or JSON
- :mod:`~dicomnode.ops.worklist`: worklist entries from the store or from result SRs, rendered
"""

__all__ = [
    "audit",
    "drift",
    "groundtruth",
    "metrics",
    "monitor",
    "performance",
    "report",
    "tables",
    "worklist",
]
