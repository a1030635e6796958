"""matplotlib for the commands' --plot options: one place that finds it and checks where a plot will go."""

import os
from pathlib import Path

INSTALL = "--plot needs matplotlib: pip install 'rnncells[plot]'"


def pyplot():
    """matplotlib.pyplot drawing to files only (the Agg backend); SystemExit with the install hint without it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit(INSTALL) from None
    return plt


def check_path(text):
    """The path a plot will be written to, checked before any work: ValueError saying what is wrong."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError:
        raise ValueError(INSTALL) from None
    path = Path(text)
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{text}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{text}: the folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise ValueError(f"{text} is a folder; give a file name such as {path / 'curves.png'}")
    formats = FigureCanvasAgg.get_supported_filetypes()
    suffix = path.suffix.lstrip(".").lower()
    if suffix and suffix not in formats:
        raise ValueError(f"{text}: matplotlib cannot write .{suffix} files (it writes {', '.join(sorted(formats))})")
    return str(path)
