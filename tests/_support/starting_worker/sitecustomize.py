"""Imported when any Python process starts whose ``PYTHONPATH`` holds this folder: a local
worker process of a sweep (a loky process, started with ``--process-name``) writes
``worker-<pid>`` into the folder ``$REST_FAIR_TEST_MARKS`` and waits there, a worker still
starting when a Ctrl-C comes."""

import os
import sys
import time

if "--process-name" in sys.argv and "REST_FAIR_TEST_MARKS" in os.environ:
    open(os.path.join(os.environ["REST_FAIR_TEST_MARKS"], f"worker-{os.getpid()}"), "w").close()
    while True:
        time.sleep(0.05)
