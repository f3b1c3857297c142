"""
``python -m hq.cli``: the same as the ``hq`` console script.
"""

from __future__ import annotations

from hq.cli import main

if __name__ == "__main__":
    main()
