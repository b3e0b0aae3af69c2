"""Drift monitoring: Evidently drift jobs, the retraining trigger policy and the report index.

Plain functions; ``flows/monitor.py`` and ``fleet monitor`` are thin shells around
:func:`monitoring.job.run_monitor`.
"""
