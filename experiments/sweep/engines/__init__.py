"""
The engines that run a sweep's commands. An engine has a `name`, a `capacity` (runs at a time) and
`start(key, command, cwd, env, log_path)`, `poll(timeout)` → `[(key, {'rc': exit status, 'node', 'host', ...})]`,
`running()`, `terminate()` (SIGTERM: the runs save their last epoch), `kill()` and `close()`.
`local` is `engines/local.py`; `ray` is `engines/ray.py`, imported only with `--engine ray`.
"""
