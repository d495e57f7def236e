"""The exit codes of every command (prefillshare and the bench/training entry points it runs):
0 done, 1 the work failed at run time, 2 bad usage or a bad config (nothing was started)."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
