"""Helpers the tests share: fits, files on disk, a browser, a torchrun worker (no tests)."""
