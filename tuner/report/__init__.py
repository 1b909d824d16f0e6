"""``tuner report NAME``: a search's report, one self-contained HTML page with its figures.

- ``data``: the trials from MLflow (per-epoch metric, times, status) and the space's scales from the spec;
- ``analysis``: the numbers behind the figures (best so far, worker slots and idle time);
- ``importance``: which params mattered, from the Optuna study;
- ``build``: all of it as one ``Report``; ``figures``: matplotlib PNGs; ``html``: index.html;
- ``write``: ``write_report`` puts the page in the search's folder and logs it to its parent run.
"""

from tuner.report.build import Report, build_report
from tuner.report.write import report_dir, write_report

__all__ = ["Report", "build_report", "report_dir", "write_report"]
