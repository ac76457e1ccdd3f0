"""``tcopd analyze``: the paper's tables and figure from run files.

One module per subcommand, each ``run(config) -> Result`` with a frozen config dataclass:
:mod:`.length` (Table 3), :mod:`.phrases` (section 6.2), :mod:`.curves` (Figure 2),
:mod:`.cost` (Table 2). Each result holds a :class:`~.tables.Table` (one row per statistic, one
column per run) that :func:`~.tables.render` turns into text, CSV or JSON. Inputs are read by
:mod:`.sources`; the figure is drawn by :mod:`tcopd.runtime.evaluation.plots`.
"""

from tcopd.pipelines.analyze.tables import FORMATS, Row, Table, render, resolve_format, write_table

__all__ = ["FORMATS", "Row", "Table", "render", "resolve_format", "write_table"]
