"""Installs the raw-folder audit hook in subprocesses started by the test suite."""

import os

if os.environ.get("LABPIPE_RAW_AUDIT"):
    import labpipe_rawaudit

    labpipe_rawaudit.install_to_file(os.environ["LABPIPE_RAW_AUDIT"])
