"""When jobs run: pure cron arithmetic (cron.py) and the run loop (runner.py)."""
