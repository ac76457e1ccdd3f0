"""``python -m tcopd``: the same as the ``tcopd`` console script."""

from tcopd.cli.main import main

main()
